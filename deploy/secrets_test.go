package deploy_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/internal/testkit"
)

// canaries are secret values put in every secret source; none may appear
// in anything a binary prints.
var canaries = []string{
	"canary-nats-password", "canary-nats-password-file", "canary-upstream-password",
	"canary-upstream-password-file", "canary-upstream-user-file", "canary-url-password",
	"canary-creds-content", "canary-tls-key-content", "canary-tokens-content",
}

// secretEnv sets every secret source: values, *_FILE variants (with and
// without the plain variable), credentials and key files, the tokens file
// and credentials inside UPSTREAM_URL.
func secretEnv(t *testing.T, fileVariants bool) []string {
	t.Helper()
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := []string{
		"NATS_CREDS=" + file("creds", "canary-creds-content"),
		"NATS_TLS_CERT=" + file("cert.pem", "not a certificate"),
		"NATS_TLS_KEY=" + file("key.pem", "canary-tls-key-content"),
		"API_TOKENS_FILE=" + file("tokens", "canary-tokens-content"),
		"UPSTREAM_URL=http://user:canary-url-password@127.0.0.1:1",
	}
	if fileVariants {
		return append(env,
			"NATS_PASSWORD_FILE="+file("natspw", "canary-nats-password-file"),
			"UPSTREAM_PASSWORD_FILE="+file("uppw", "canary-upstream-password-file"),
			"UPSTREAM_USER_FILE="+file("upuser", "canary-upstream-user-file"),
		)
	}
	return append(env, "NATS_PASSWORD=canary-nats-password", "UPSTREAM_PASSWORD=canary-upstream-password")
}

// TestNoSecretPrinted runs every binary the ways an operator gets output
// from it (a mistyped flag, -h, a bad value, a start that fails) with
// canary values in every secret source, and searches all of it.
func TestNoSecretPrinted(t *testing.T) {
	bins := map[string]string{}
	for _, pkg := range []string{"producers/cmd/producers", "enricher/cmd/enricher", "projector/cmd/projector", "api/cmd/api", "deploy/standalone"} {
		bins[filepath.Base(pkg)] = testkit.Build(t, "github.com/incidentpipe/pipeline/"+pkg)
	}
	cases := map[string]struct {
		args []string
		env  []string
	}{
		"mistyped flag": {args: []string{"-pol-interval", "1s"}},
		"help":          {args: []string{"-h"}},
		"bad value":     {env: []string{"POLL_INTERVAL=soon"}},
		// TLS files that do not load: the start fails after reading them.
		"failing start": {env: []string{"NATS_URL=nats://127.0.0.1:1", "METRICS_ADDR=127.0.0.1:0", "API_ADDR=127.0.0.1:0", "DATA_DIR=" + t.TempDir()}},
	}
	for name, bin := range bins {
		for cname, c := range cases {
			for _, files := range []bool{false, true} {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				cmd := exec.CommandContext(ctx, bin, c.args...)
				cmd.Env = append(append(append(os.Environ(), secretEnv(t, files)...), c.env...), "LOG_FORMAT=text")
				var out bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &out
				_ = cmd.Run()
				cancel()
				if out.Len() == 0 {
					t.Errorf("%s, %s: printed nothing; a failure must say why", name, cname)
				}
				for _, c := range canaries {
					if strings.Contains(out.String(), c) {
						t.Errorf("%s, %s (file variants %v): printed the secret %q:\n%s", name, cname, files, c, out.String())
					}
				}
			}
		}
	}
}
