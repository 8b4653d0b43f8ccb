// Tests of what docker compose would run (Docker itself does not run here):
// the compose files load and validate, every build context and Dockerfile
// exists, every service has a healthcheck, the profiles and ports are as
// documented, and every variable a service reads is in the README.
package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/incidentpipe/pipeline/internal/config"
)

func loadCompose(t *testing.T, files ...string) *types.Project {
	t.Helper()
	p, err := loadComposeEnv([]string{"UPSTREAM_URL=http://simulator:8000"}, files...)
	if err != nil {
		t.Fatalf("loading %v: %v", files, err)
	}
	return p
}

func loadComposeEnv(env []string, files ...string) (*types.Project, error) {
	opts, err := cli.NewProjectOptions(files,
		cli.WithWorkingDirectory(".."),
		cli.WithProfiles([]string{"*"}),
		cli.WithEnv(env),
		cli.WithName("incidents"),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

// TestComposeRefusesWithoutUpstream: without UPSTREAM_URL, compose does not
// start producers polling a host that does not exist; it says the two ways
// to run.
func TestComposeRefusesWithoutUpstream(t *testing.T) {
	_, err := loadComposeEnv(nil, "../docker-compose.yml")
	if err == nil {
		t.Fatal("compose loaded without UPSTREAM_URL")
	}
	for _, want := range []string{"UPSTREAM_URL", "docker compose up", "UPSTREAM_URL=http://simulator:8000 docker compose --profile demo up"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal %q does not say %q", err, want)
		}
	}
}

// pipelineServices are the services built from this repository, with the
// package each runs.
var pipelineServices = map[string]string{
	"producers": "./producers/cmd/producers",
	"enricher":  "./enricher/cmd/enricher",
	"projector": "./projector/cmd/projector",
	"api":       "./api/cmd/api",
	"simulator": "./deploy/simulator",
}

func TestComposeFile(t *testing.T) {
	p := loadCompose(t, "../docker-compose.yml")
	want := []string{"api", "enricher", "grafana", "nats", "producers", "projector", "prometheus", "simulator"}
	if got := p.ServiceNames(); !slices.Equal(sortedCopy(got), want) {
		t.Fatalf("services %v, want %v", sortedCopy(got), want)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	known := config.Variables()
	for name, svc := range p.Services {
		if svc.HealthCheck == nil || len(svc.HealthCheck.Test) == 0 {
			t.Errorf("%s has no healthcheck", name)
		}
		if svc.Build != nil {
			ctx := svc.Build.Context
			if st, err := os.Stat(ctx); err != nil || !st.IsDir() {
				t.Errorf("%s: build context %s does not exist", name, ctx)
			}
			df := filepath.Join(ctx, svc.Build.Dockerfile)
			if _, err := os.Stat(df); err != nil {
				t.Errorf("%s: Dockerfile %s does not exist", name, df)
			}
			cmd := svc.Build.Args["CMD"]
			if cmd == nil || *cmd != pipelineServices[name] {
				t.Errorf("%s builds %v, want %s", name, cmd, pipelineServices[name])
			} else if _, err := os.Stat(filepath.Join(ctx, *cmd, "main.go")); err != nil {
				t.Errorf("%s: %s has no main.go", name, *cmd)
			}
		} else if svc.Image == "" {
			t.Errorf("%s has neither build nor image", name)
		}
		if _, ours := pipelineServices[name]; ours && name != "simulator" {
			for v := range svc.Environment {
				if v == "HEALTHCHECK_URL" {
					continue
				}
				if _, ok := known[v]; !ok {
					t.Errorf("%s sets %s, which the binaries do not read", name, v)
				}
				if !strings.Contains(string(readme), "`"+v+"`") {
					t.Errorf("%s reads %s, which the README does not document", name, v)
				}
			}
		}
		for _, v := range svc.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s, which does not exist", name, v.Source)
				}
			}
		}
	}
	if got := p.Services["simulator"].Profiles; !slices.Equal(got, []string{"demo"}) {
		t.Errorf("simulator profiles %v, want [demo]", got)
	}
	for name, svc := range p.Services {
		if name != "simulator" && len(svc.Profiles) > 0 {
			t.Errorf("%s is behind profiles %v; only the simulator is", name, svc.Profiles)
		}
	}
	api := p.Services["api"]
	if len(api.Ports) != 1 || api.Ports[0].Published != "9000" || api.Ports[0].Target != 9000 {
		t.Errorf("api ports %+v, want 9000:9000", api.Ports)
	}
	nats := p.Services["nats"]
	hasStore := slices.ContainsFunc(nats.Volumes, func(v types.ServiceVolumeConfig) bool {
		return v.Type == types.VolumeTypeVolume && v.Target == "/data"
	})
	if !hasStore || !strings.HasPrefix(nats.Image, "nats:") {
		t.Errorf("nats: image %s, store volume %v", nats.Image, hasStore)
	}
	for v := range config.Variables() {
		if !strings.Contains(string(readme), "`"+v+"`") {
			t.Errorf("configuration variable %s is not documented in the README", v)
		}
	}
}

func TestComposeClusterOverride(t *testing.T) {
	p := loadCompose(t, "../docker-compose.yml", "compose.cluster.yml")
	for _, n := range []string{"nats", "nats-2", "nats-3"} {
		svc, ok := p.Services[n]
		if !ok {
			t.Fatalf("cluster: no service %s", n)
		}
		if !slices.Contains(svc.Command, "/etc/nats/cluster.conf") || svc.HealthCheck == nil {
			t.Errorf("%s: command %v, healthcheck %v", n, svc.Command, svc.HealthCheck)
		}
		for _, v := range svc.Volumes {
			if v.Type == types.VolumeTypeBind {
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s mounts %s, which does not exist", n, v.Source)
				}
			}
		}
	}
	for _, n := range []string{"producers", "enricher", "projector", "api"} {
		env := p.Services[n].Environment
		if r := env["NATS_REPLICAS"]; r == nil || *r != "3" {
			t.Errorf("%s: NATS_REPLICAS %v, want 3", n, r)
		}
		if u := env["NATS_URL"]; u == nil || strings.Count(*u, "nats://") != 3 {
			t.Errorf("%s: NATS_URL %v, want all three servers", n, u)
		}
	}
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []string{"CGO_ENABLED=0", "USER nonroot", "HEALTHCHECK", "ARG CMD"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if n := len(regexp.MustCompile(`(?m)^FROM `).FindAllString(df, -1)); n < 2 {
		t.Errorf("Dockerfile has %d stages, want a multi-stage build", n)
	}
	if regexp.MustCompile(`(?i)(PASSWORD|TOKEN|SECRET)\s*=`).MatchString(df) {
		t.Error("Dockerfile bakes a secret into the image")
	}
}

// TestBinariesBuildStatic builds every service binary with CGO_ENABLED=0.
func TestBinariesBuildStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds every binary")
	}
	out := t.TempDir()
	pkgs := []string{"./deploy/standalone", "./deploy/healthcheck"}
	for _, p := range pipelineServices {
		pkgs = append(pkgs, p)
	}
	args := append([]string{"build", "-o", out + "/"}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, b)
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != len(pkgs) {
		t.Errorf("built %d binaries, want %d", len(entries), len(pkgs))
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
