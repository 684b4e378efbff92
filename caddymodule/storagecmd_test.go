package caddymodule

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/keygate/keygate/store"
	"github.com/keygate/keygate/store/etcdtest"
)

// TestStorageCopyCommand: `keygate storage copy` moves a stopped node's
// Pebble store to etcd (a store there admits its key), refuses the same
// prefix a second time, and refuses malformed arguments.
func TestStorageCopyCommand(t *testing.T) {
	srv, err := etcdtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	dir := t.TempDir()
	src, err := store.Open(store.Options{Dir: dir, FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.UpdateSettings("op", "default", store.SettingsPatch{APIKeysEnabled: store.Some(true)}); err != nil {
		t.Fatal(err)
	}
	_, secret, err := src.CreateKey("op", "default", "svc", store.KeyInput{Name: "moved"})
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		c := StorageCopyCommand()
		var out bytes.Buffer
		c.SetOut(&out)
		c.SetErr(&out)
		c.SetArgs(args)
		err := c.Execute()
		return out.String(), err
	}
	to := "etcd:" + srv.Endpoint
	if _, err := run("--from", "pebble:"+dir, "--to", to, "--prefix", "/moved/"); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("copy of a store in use: %v", err)
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := run("--from", "pebble:"+dir, "--to", to, "--prefix", "/moved/")
	if err != nil || !strings.Contains(out, "copied") {
		t.Fatalf("copy: %v %s", err, out)
	}
	kv, err := store.OpenEtcd(store.EtcdConfig{Endpoints: []string{srv.Endpoint}, Prefix: "/moved/"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Options{KV: kv, NodeID: "n1", FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, v, err := st.Verify("default", secret, time.Now()); err != nil || v != store.VerdictValid {
		t.Fatalf("moved key on etcd: %v %v", v, err)
	}
	if _, err := run("--from", "pebble:"+dir, "--to", to, "--prefix", "/moved/"); err == nil || !strings.Contains(err.Error(), "already holds data") {
		t.Fatalf("second copy: %v", err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--from", dir, "--to", to}, "pebble:<dir>"},
		{[]string{"--from", "pebble:" + dir, "--to", srv.Endpoint}, "etcd:<host:port>"},
		{[]string{"--from", "pebble:" + dir, "--to", "etcd:nohost"}, "host:port"},
		{[]string{"--from", "pebble:" + dir, "--to", to, "--prefix", "moved"}, "prefix"},
		{[]string{"--from", "pebble:" + t.TempDir(), "--to", to, "--prefix", "/empty/"}, "no keygate store"},
	} {
		if _, err := run(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error about %s", c.args, err, c.want)
		}
	}
}
