package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keygate/keygate/store/etcdtest"
)

// TestEtcdTLS: a cluster that requires TLS with client certificates is
// reached with the CA, cert and key files; without the client certificate
// the open fails as unavailable.
func TestEtcdTLS(t *testing.T) {
	files := writeTestPKI(t)
	srv, err := etcdtest.StartTLS(files)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	cfg := EtcdConfig{Endpoints: []string{srv.Endpoint}, CAFile: files.CA, Timeout: time.Second}
	if kv, err := openEtcd(cfg); err == nil {
		_ = kv.Close()
		t.Fatal("opened a TLS etcd that requires a client certificate without one")
	} else if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("without a client certificate: %v, want ErrUnavailable", err)
	}
	cfg.CertFile, cfg.KeyFile = filepath.Join(filepath.Dir(files.CA), "client.pem"), filepath.Join(filepath.Dir(files.CA), "client-key.pem")
	kv, err := openEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := memStore(t, newClock(), func(o *Options) { o.KV, o.NodeID = kv, "tls-node" })
	enable(t, s, "acme")
	_, secret := mustKey(t, s, "acme", "alice", KeyInput{})
	if v := verdict(t, s, "acme", secret, s.now()); v != VerdictValid {
		t.Fatalf("over TLS: %s", vname(v))
	}
	if _, err := (&EtcdConfig{CertFile: "x.pem"}).tls(); err == nil {
		t.Fatal("a certificate without its key was accepted")
	}
}

// TestEtcdAuth: with etcd's authentication on, the user name and password
// (and only the right ones) open the store.
func TestEtcdAuth(t *testing.T) {
	srv, err := etcdtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(cli.RoleAdd(ctx, "root"))
	must(cli.UserAdd(ctx, "root", "root-password"))
	must(cli.UserGrantRole(ctx, "root", "root"))
	must(cli.RoleAdd(ctx, "keygate"))
	must(cli.RoleGrantPermission(ctx, "keygate", "/keygate/", clientv3.GetPrefixRangeEnd("/keygate/"), clientv3.PermissionType(clientv3.PermReadWrite)))
	must(cli.UserAdd(ctx, "keygate", "keygate-password"))
	must(cli.UserGrantRole(ctx, "keygate", "keygate"))
	must(cli.AuthEnable(ctx))

	cfg := EtcdConfig{Endpoints: []string{srv.Endpoint}, Username: "keygate", Password: "wrong", Timeout: time.Second}
	if kv, err := openEtcd(cfg); err == nil {
		_ = kv.Close()
		t.Fatal("opened with a wrong password")
	}
	cfg.Password = "keygate-password"
	kv, err := openEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := memStore(t, newClock(), func(o *Options) { o.KV, o.NodeID = kv, "auth-node" })
	enable(t, s, "acme")
	_, secret := mustKey(t, s, "acme", "alice", KeyInput{})
	if v := verdict(t, s, "acme", secret, s.now()); v != VerdictValid {
		t.Fatalf("with auth: %s", vname(v))
	}
	// The role covers /keygate/ only: another prefix is refused.
	cfg.Prefix = "/other/"
	if kv, err := openEtcd(cfg); err == nil {
		_ = kv.Close()
		t.Fatal("opened a prefix the user has no permission on")
	}
}

// writeTestPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and returns the server's files and the client's TLS config.
func writeTestPKI(t *testing.T) *etcdtest.TLSFiles {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keygate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string, tls.Certificate) {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		cert := write(name+".pem", "CERTIFICATE", der)
		key := write(name+"-key.pem", "EC PRIVATE KEY", kder)
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key, pair
	}
	f := &etcdtest.TLSFiles{CA: write("ca.pem", "CERTIFICATE", caDER)}
	f.Cert, f.Key, _ = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	_, _, client := leaf("client", 3, x509.ExtKeyUsageClientAuth)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	f.Client = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{client}, MinVersion: tls.VersionTLS12}
	return f
}
