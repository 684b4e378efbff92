package cli

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Import batches: the API takes at most maxImportKeys keys and 16 MiB per
// call; batches are cut below both.
const (
	maxImportKeys      = 10_000
	maxImportBatchSize = 12 << 20 // bytes of JSON per call, under the API's 16 MiB
)

// importEntry is one key of an import file, as the API takes it.
type importEntry struct {
	Name        string     `json:"name"`
	Description string     `json:"description,omitempty"`
	Owner       string     `json:"owner,omitempty"`
	Group       string     `json:"group,omitempty"`
	ExpiresAt   *time.Time `json:"expires_at,omitempty"`
	IPAllowlist []string   `json:"ip_allowlist,omitempty"`
	Secret      string     `json:"secret"`
}

// importColumns are the CSV header's known columns.
var importColumns = map[string]bool{"name": true, "description": true, "owner": true, "group": true,
	"expires_at": true, "ip_allowlist": true, "secret": true}

// importAnswer is the API's answer to one import call.
type importAnswer struct {
	Imported int `json:"imported"`
	Results  []struct {
		Index int     `json:"index"`
		ID    *string `json:"id"`
		Error *string `json:"error"`
	} `json:"results"`
}

func keysImportCommand(conn *connection) *cobra.Command {
	var format string
	var batch int
	cmd := &cobra.Command{
		Use:   "import <file | ->",
		Short: "Import keys from another gateway, keeping their secrets (tenant_admin)",
		Long: "Import keys with the secrets they already have (Kong, APISIX, UUIDs, 40 hex characters…: 16–256\n" +
			"printable ASCII characters), so clients keep working unchanged. Only the secrets' hashes are stored.\n\n" +
			"The file (\"-\": standard input) holds JSON lines, one key per line:\n" +
			`  {"name": "billing", "owner": "alice", "secret": "3f2b8c1e-…", "group": "payments", "expires_at": "2030-01-01T00:00:00Z", "ip_allowlist": ["10.0.0.0/8"]}` + "\n" +
			"or CSV with a header row naming the columns (name and secret required; ip_allowlist entries\n" +
			"separated by spaces or \";\"):\n" +
			"  name,owner,group,expires_at,ip_allowlist,description,secret\n\n" +
			"Keys are sent in batches of up to 10,000 (one durable write each). An entry the API refuses\n" +
			"(invalid, a duplicate secret, over a limit) is reported with its line and skipped; the others\n" +
			"of its batch are imported. The command fails if any entry was skipped.",
		Example: `  keygate keys import kong-keys.jsonl
  keygate keys import --format csv - < keys.csv`,
		Args: cobra.ExactArgs(1),
	}
	f := cmd.Flags()
	f.StringVar(&format, "format", "", `"jsonl" or "csv" (default: from the file's extension, else from its first character)`)
	f.IntVar(&batch, "batch", maxImportKeys, "keys per API call, 1–10000")
	cmd.RunE = action(conn, func(in *invocation) error {
		if batch < 1 || batch > maxImportKeys {
			return fmt.Errorf("--batch %d: give 1–%d", batch, maxImportKeys)
		}
		name := in.args[0]
		var src io.Reader
		if name == "-" {
			src = in.cmd.InOrStdin()
		} else {
			file, err := os.Open(name)
			if err != nil {
				return err
			}
			defer file.Close()
			src = file
		}
		br := bufio.NewReaderSize(src, 1<<20)
		var err error
		if format, err = importFormat(format, name, br); err != nil {
			return err
		}
		return runImport(in, br, format, batch)
	})
	return cmd
}

// importFormat settles the file's format: the flag, the extension, or the
// first non-blank character ("{": JSON lines).
func importFormat(flag, name string, br *bufio.Reader) (string, error) {
	switch flag {
	case "jsonl", "csv":
		return flag, nil
	case "":
	default:
		return "", fmt.Errorf("--format %q: give jsonl or csv", flag)
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".csv":
		return "csv", nil
	case ".jsonl", ".ndjson", ".json":
		return "jsonl", nil
	}
	for n := 1; ; n++ {
		b, err := br.Peek(n)
		if len(b) < n {
			if err == nil {
				err = io.EOF
			}
			return "", fmt.Errorf("%s: no keys to import (%v)", name, err)
		}
		switch c := b[n-1]; c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{':
			return "jsonl", nil
		default:
			return "csv", nil
		}
	}
}

// importReader yields the file's entries with their line numbers.
type importReader func() (entry importEntry, line int, err error)

func jsonlReader(br *bufio.Reader) importReader {
	sc := bufio.NewScanner(br)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	line := 0
	return func() (importEntry, int, error) {
		for sc.Scan() {
			line++
			text := bytes.TrimSpace(sc.Bytes())
			if len(text) == 0 {
				continue
			}
			var e importEntry
			dec := json.NewDecoder(bytes.NewReader(text))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil {
				// encoding/json's messages name fields and types, never
				// values: no secret is quoted.
				return e, line, fmt.Errorf("line %d: %w", line, err)
			}
			if dec.More() {
				return e, line, fmt.Errorf("line %d: more than one JSON object", line)
			}
			return e, line, nil
		}
		if err := sc.Err(); err != nil {
			return importEntry{}, line, fmt.Errorf("line %d: %w", line+1, err)
		}
		return importEntry{}, line, io.EOF
	}
}

func csvReader(br *bufio.Reader) (importReader, error) {
	r := csv.NewReader(br)
	r.FieldsPerRecord = 0 // every row as long as the header
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("CSV header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		if !importColumns[h] {
			return nil, fmt.Errorf("CSV header: unknown column %q (known: name, description, owner, group, expires_at, ip_allowlist, secret)", h)
		}
		if _, dup := col[h]; dup {
			return nil, fmt.Errorf("CSV header: column %q twice", h)
		}
		col[h] = i
	}
	for _, need := range []string{"name", "secret"} {
		if _, ok := col[need]; !ok {
			return nil, fmt.Errorf("CSV header: no %q column", need)
		}
	}
	get := func(rec []string, name string) string {
		if i, ok := col[name]; ok {
			return rec[i]
		}
		return ""
	}
	return func() (importEntry, int, error) {
		rec, err := r.Read()
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) {
				// ParseError's own text does not quote the record.
				return importEntry{}, pe.Line, fmt.Errorf("line %d: %v", pe.Line, pe.Err)
			}
			return importEntry{}, 0, err
		}
		line, _ := r.FieldPos(0)
		e := importEntry{Name: get(rec, "name"), Description: get(rec, "description"), Owner: get(rec, "owner"),
			Group: get(rec, "group"), Secret: get(rec, "secret")}
		if v := strings.TrimSpace(get(rec, "expires_at")); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return e, line, fmt.Errorf("line %d: expires_at: give an RFC 3339 time such as 2030-01-02T15:04:05Z", line)
			}
			e.ExpiresAt = &t
		}
		if v := get(rec, "ip_allowlist"); strings.TrimSpace(v) != "" {
			e.IPAllowlist = strings.FieldsFunc(v, func(c rune) bool { return c == ';' || c == ' ' || c == ',' })
		}
		return e, line, nil
	}, nil
}

// runImport reads the entries, sends them in batches and reports.
func runImport(in *invocation, br *bufio.Reader, format string, batch int) error {
	var next importReader
	if format == "csv" {
		var err error
		if next, err = csvReader(br); err != nil {
			return err
		}
	} else {
		next = jsonlReader(br)
	}
	out, errOut := in.cmd.OutOrStdout(), in.cmd.ErrOrStderr()
	var (
		entries          []json.RawMessage
		lines            []int
		size             int
		total, imported  int
		skipped, batches int
	)
	send := func() error {
		if len(entries) == 0 {
			return nil
		}
		var ans importAnswer
		err := in.callInto("POST", in.tenantPath("keys", "import"), nil, map[string]any{"keys": entries}, &ans)
		if err != nil {
			return fmt.Errorf("batch %d (lines %d–%d): %w; %d keys were imported before it", batches+1, lines[0], lines[len(lines)-1], err, imported)
		}
		batches++
		imported += ans.Imported
		for _, r := range ans.Results {
			if r.Error == nil {
				continue
			}
			skipped++
			line := 0
			if r.Index >= 0 && r.Index < len(lines) {
				line = lines[r.Index]
			}
			if !in.conn.json {
				fmt.Fprintf(errOut, "line %d: %s\n", line, entryToLine(*r.Error, lines))
			}
		}
		entries, lines, size = entries[:0], lines[:0], 0
		return nil
	}
	for {
		e, line, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if sendErr := send(); sendErr != nil {
				return sendErr
			}
			return fmt.Errorf("%w (%d keys imported before it)", err, imported)
		}
		raw, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
		if len(entries) == batch || size+len(raw)+1 > maxImportBatchSize {
			if err := send(); err != nil {
				return err
			}
		}
		entries = append(entries, raw)
		lines = append(lines, line)
		size += len(raw) + 1
		total++
	}
	if err := send(); err != nil {
		return err
	}
	if total == 0 {
		return errors.New("no keys to import")
	}
	if !in.conn.json {
		fmt.Fprintf(out, "Imported %d of %d keys in %d calls; %d skipped.\n", imported, total, batches, skipped)
	}
	if skipped > 0 {
		return fmt.Errorf("%d of %d keys were not imported (see above)", skipped, total)
	}
	return nil
}

// sameAsEntry is how the API names the earlier entry of a call that had
// the same secret.
var sameAsEntry = regexp.MustCompile(`the same as entry (\d+)'s`)

// entryToLine turns the API's "the same as entry 3's" (an index in the
// call) into "the same as line 17's" (a line of the file).
func entryToLine(msg string, lines []int) string {
	return sameAsEntry.ReplaceAllStringFunc(msg, func(m string) string {
		i, err := strconv.Atoi(sameAsEntry.FindStringSubmatch(m)[1])
		if err != nil || i < 0 || i >= len(lines) {
			return m
		}
		return fmt.Sprintf("the same as line %d's", lines[i])
	})
}
