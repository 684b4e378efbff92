package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// table prints aligned columns for people.
type table struct {
	tw *tabwriter.Writer
}

func newTable(w io.Writer, headers ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	if len(headers) > 0 {
		t.row(headers...)
	}
	return t
}

// row adds one line; tabs and newlines inside cells are flattened so they
// cannot break the columns.
func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() { _ = t.tw.Flush() }

// fields prints "label  value" lines, aligned.
func fields(w io.Writer, pairs ...string) {
	t := newTable(w)
	for i := 0; i+1 < len(pairs); i += 2 {
		t.row(pairs[i], pairs[i+1])
	}
	t.flush()
}

// orDash shows an absent value.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// when formats an optional time for tables (UTC, to the second).
func when(t *time.Time, absent string) string {
	if t == nil {
		return absent
	}
	return t.UTC().Format(time.RFC3339)
}

// warnSecret tells the person at the terminal to keep the secret now. It
// goes to stderr so that it shows even when stdout is piped or is --json.
func warnSecret(w io.Writer, what string) {
	fmt.Fprintf(w, "\nWARNING: store this %s now. It is shown only this once; keygate keeps only a hash and cannot show it again.\n", what)
}

// parseExpiry reads --expires: an RFC 3339 time, or a duration from now
// ("720h", "90m", or days as "30d").
func parseExpiry(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	d, err := parseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("--expires %q: give an RFC 3339 time (2030-01-02T15:04:05Z) or a positive duration from now (720h, 30d)", s)
	}
	return now.Add(d).UTC().Truncate(time.Second), nil
}

// parseDuration is time.ParseDuration plus whole days ("30d").
func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return 0, fmt.Errorf("not a duration: %q", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// durationArg reads a duration flag for the API: a Go duration string, or
// nil for "none" (no limit).
func durationArg(flag, s string) (any, error) {
	switch strings.ToLower(s) {
	case "none", "null", "unlimited", "off":
		return nil, nil
	}
	d, err := parseDuration(s)
	if err != nil {
		return nil, fmt.Errorf("--%s %q: give a duration such as 720h or 30d, or none", flag, s)
	}
	return d.String(), nil
}
