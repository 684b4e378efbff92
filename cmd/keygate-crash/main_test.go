package main

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"
)

// The tests of this package run the real keygate binary, built once per
// test binary (plain `go build`, no -race, whatever flags `go test` got).

var (
	binOnce   sync.Once
	binDir    string
	binPath   string
	binErr    error
	buildTook time.Duration
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// keygateBinary builds ./cmd/keygate on first use and returns its path.
func keygateBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "keygate-test-bin-")
		if binErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		start := time.Now()
		binPath, binErr = buildKeygate(ctx, ".", binDir)
		buildTook = time.Since(start)
		if binErr == nil {
			t.Logf("built keygate in %v", buildTook.Round(time.Millisecond))
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}
