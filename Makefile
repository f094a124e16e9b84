# fleet — make targets. `make up` starts a fleet; `make test` is what CI runs.
GO      ?= go
BIN     ?= bin/fleet
# Fuzz budgets are execution counts, not durations: a duration's deadline can
# fire while a worker is mid-call, and go test then fails the target with a bare
# "context deadline exceeded" and no failing input (golang/go#75804; it failed
# CI once on FuzzValidToken). A count has no deadline to race.
FUZZTIME ?= 200000x
# Every fuzz target, as package:Target.
FUZZ_TARGETS = ./job:FuzzDecodeSpec ./job:FuzzDecodeClaim ./job:FuzzDecodeLease ./job:FuzzDecodeComplete \
               ./job:FuzzDecodeCancel ./job:FuzzDecodeFactory ./job:FuzzDecodeRecord ./job:FuzzRecordCodec \
               ./job:FuzzEventCodec ./job:FuzzControlCodec ./subjects:FuzzValidToken

.PHONY: build test unit fuzz-short fuzz up bench chaos lint cross clean

build:
	$(GO) build -o $(BIN) ./cmd/fleet

## test: vet, race-enabled tests of every package, and a short run of every fuzz target
test: unit fuzz-short

unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...

fuzz-short:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "fuzz $$fn ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

## fuzz: every fuzz target for longer (FUZZTIME=50000000x make fuzz)
fuzz: FUZZTIME = 5000000x
fuzz: fuzz-short

## up: a whole fleet on the embedded broker (Ctrl-C stops it)
up: build
	./$(BIN) up

bench: build
	./$(BIN) bench

## chaos: every fault at soak length; prints the checker's table and writes chaos-report.json
chaos:
	$(GO) test -count=1 -timeout 60m -run TestChaos -v ./chaos -args -chaos.soak -chaos.report=$(CURDIR)/chaos-report.json

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

## cross: factories run on mac, linux and windows
cross:
	GOOS=darwin  GOARCH=amd64 $(GO) build -o /dev/null ./cmd/fleet
	GOOS=darwin  GOARCH=arm64 $(GO) build -o /dev/null ./cmd/fleet
	GOOS=windows GOARCH=amd64 $(GO) build -o /dev/null ./cmd/fleet
	GOOS=windows GOARCH=arm64 $(GO) build -o /dev/null ./cmd/fleet
	GOOS=linux   GOARCH=arm64 $(GO) build -o /dev/null ./cmd/fleet

clean:
	rm -rf bin .fleet
