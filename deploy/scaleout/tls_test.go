package scaleout_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// testCA is a certificate authority made for one test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, dir: t.TempDir()}
	ca.write(t, "ca.pem", "CERTIFICATE", der)
	return ca
}

func (ca *testCA) write(t *testing.T, name, kind string, der []byte) string {
	t.Helper()
	p := filepath.Join(ca.dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// issue makes a certificate and key signed by ca, for a server (with
// 127.0.0.1 as its address) or a client; it returns their files.
func (ca *testCA) issue(t *testing.T, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ca.write(t, name+".pem", "CERTIFICATE", der), ca.write(t, name+"-key.pem", "EC PRIVATE KEY", kder)
}

// TestStagesOverTLS runs every stage as its own process against a
// nats-server that requires TLS with client certificates from a test CA:
// the view is exact. A client with the wrong CA, or without a client
// certificate, is refused with a clear error.
func TestStagesOverTLS(t *testing.T) {
	bin := t.TempDir()
	build(t, bin, "github.com/nats-io/nats-server/v2", "./producers/cmd/producers", "./enricher/cmd/enricher",
		"./projector/cmd/projector", "./api/cmd/api")
	ca := newCA(t, "test CA")
	serverCert, serverKey := ca.issue(t, "nats", true)
	clientCert, clientKey := ca.issue(t, "stage", false)
	natsAddr := testkit.FreeAddr(t)
	conf := filepath.Join(t.TempDir(), "nats.conf")
	err := os.WriteFile(conf, []byte(fmt.Sprintf(`listen: %q
max_payload: 8MB
jetstream { store_dir: %q }
tls { cert_file: %q, key_file: %q, ca_file: %q, verify: true, timeout: 5 }
`, natsAddr, t.TempDir(), serverCert, serverKey, filepath.Join(ca.dir, "ca.pem"))), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	spawnArgs(t, filepath.Join(bin, "nats-server"), "-c", conf)
	natsURL := "tls://" + natsAddr
	good := natsutil.ConnectOptions{URL: natsURL, Name: "test", CAFile: filepath.Join(ca.dir, "ca.pem"), CertFile: clientCert, KeyFile: clientKey}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, _, err := natsutil.Connect(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()

	// Refusals: a client trusting another CA, and one without a certificate.
	other := newCA(t, "other CA")
	for name, o := range map[string]natsutil.ConnectOptions{
		"wrong CA":              {URL: natsURL, CAFile: filepath.Join(other.dir, "ca.pem"), CertFile: clientCert, KeyFile: clientKey},
		"no client certificate": {URL: natsURL, CAFile: filepath.Join(ca.dir, "ca.pem")},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		nc, _, err := natsutil.Connect(ctx, o)
		cancel()
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
			continue
		}
		t.Logf("%s: %v", name, err)
		if !strings.Contains(err.Error(), "certificate") && !strings.Contains(err.Error(), "tls") {
			t.Errorf("%s: error %q does not say it is about TLS", name, err)
		}
	}

	_, hs, expected := pipelinetest.CaptureUpstream(t, simulator.Faults{})
	common := []string{"NATS_URL=" + natsURL, "LOG_FORMAT=text", "NATS_CA_FILE=" + filepath.Join(ca.dir, "ca.pem"),
		"NATS_TLS_CERT=" + clientCert, "NATS_TLS_KEY=" + clientKey}
	apiAddr := testkit.FreeAddr(t)
	run := func(name string, env ...string) {
		spawn(t, filepath.Join(bin, name), append(append(env, common...), "METRICS_ADDR="+testkit.FreeAddr(t))...)
	}
	run("enricher")
	run("projector")
	run("api", "API_ADDR="+apiAddr)
	run("producers", "UPSTREAM_URL="+hs.URL, "UPSTREAM_USER=user", "UPSTREAM_PASSWORD="+pipelinetest.UpstreamPassword, "POLL_INTERVAL=1s")
	pipelinetest.WaitExact(t, "http://"+apiAddr, expected, 120*time.Second)

	// A stage without a client certificate does not start, and says why.
	cmd := exec.Command(filepath.Join(bin, "enricher"))
	cmd.Env = append(os.Environ(), "NATS_URL="+natsURL, "NATS_CA_FILE="+filepath.Join(ca.dir, "ca.pem"), "METRICS_ADDR="+testkit.FreeAddr(t))
	out := &pipelinetest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		s := out.String()
		return strings.Contains(s, "certificate") || strings.Contains(s, "tls"), "no TLS error logged: " + s
	})
}
