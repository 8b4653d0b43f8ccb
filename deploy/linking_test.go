package deploy_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestOnlyStandaloneLinksTheServer: the stage binaries connect to NATS;
// only the standalone embeds a server.
func TestOnlyStandaloneLinksTheServer(t *testing.T) {
	for pkg, wantServer := range map[string]bool{
		"github.com/incidentpipe/pipeline/producers/cmd/producers": false,
		"github.com/incidentpipe/pipeline/enricher/cmd/enricher":   false,
		"github.com/incidentpipe/pipeline/projector/cmd/projector": false,
		"github.com/incidentpipe/pipeline/api/cmd/api":             false,
		"github.com/incidentpipe/pipeline/deploy/simulator":        false,
		"github.com/incidentpipe/pipeline/deploy/standalone":       true,
	} {
		cmd := exec.Command("go", "list", "-deps", pkg)
		cmd.Dir = ".."
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		if links := strings.Contains(string(out), "github.com/nats-io/nats-server/v2/server"); links != wantServer {
			t.Errorf("%s links nats-server: %v, want %v", pkg, links, wantServer)
		}
	}
}
