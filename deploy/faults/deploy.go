package faults

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Topology is how the pipeline runs on the machine that loses power.
type Topology string

const (
	// Standalone is the one process with its embedded NATS server.
	Standalone Topology = "standalone"
	// Separate is nats-server with deploy/nats/nats.conf (the compose
	// configuration) and the four stage binaries.
	Separate Topology = "separate"
)

// Binaries are what a deployment runs.
type Binaries struct {
	// Standalone is the standalone binary.
	Standalone string
	// Dir holds nats-server, producers, enricher, projector and api, for
	// Separate; NATSConfig is deploy/nats/nats.conf beside auth.conf.
	Dir, NATSConfig string
}

// Packages are the packages Binaries are built from, by binary name.
var Packages = map[string]string{
	"standalone":  "github.com/incidentpipe/pipeline/deploy/standalone",
	"nats-server": "github.com/nats-io/nats-server/v2",
	"producers":   "github.com/incidentpipe/pipeline/producers/cmd/producers",
	"enricher":    "github.com/incidentpipe/pipeline/enricher/cmd/enricher",
	"projector":   "github.com/incidentpipe/pipeline/projector/cmd/projector",
	"api":         "github.com/incidentpipe/pipeline/api/cmd/api",
}

// Deployment is the pipeline running as child processes, as an operator
// runs it: its NATS data on the file system under test.
type Deployment struct {
	API  string // http://127.0.0.1:port
	NATS string // the NATS server's client URL

	procs   []*child
	rebuild func() *exec.Cmd
}

// child is one process of a deployment.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan error
}

// DeployOptions say how to start a deployment.
type DeployOptions struct {
	Topology Topology
	Binaries Binaries
	DataDir  string
	Upstream *Upstream
	// Sync is NATS_SYNC of the standalone, or the sync_interval of
	// nats-server (empty: the deployment's default, always).
	Sync string
	// PollInterval is POLL_INTERVAL.
	PollInterval time.Duration
	// Log receives the processes' output (not on the file system under test).
	Log *os.File
}

// passwords of the NATS users of nats.conf, for the harness only.
func password(user string) string { return "faults-" + user }

var stageUsers = []string{"producers", "enricher", "projector", "api", "admin"}

// Deploy starts the pipeline and waits until its API answers.
func Deploy(ctx context.Context, o DeployOptions) (*Deployment, error) {
	api, err := freeAddr()
	if err != nil {
		return nil, err
	}
	natsAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	d := &Deployment{API: "http://" + api, NATS: "nats://" + natsAddr}
	common := []string{
		"UPSTREAM_URL=" + o.Upstream.URL, "UPSTREAM_USER=" + o.Upstream.User, "UPSTREAM_PASSWORD=" + o.Upstream.Password,
		"POLL_INTERVAL=" + o.PollInterval.String(), "UPSTREAM_TIMEOUT=5s", "LOG_FORMAT=text",
	}
	switch o.Topology {
	case Standalone, "":
		env := append(common, "DATA_DIR="+o.DataDir, "API_ADDR="+api, "NATS_LISTEN="+natsAddr)
		if o.Sync != "" {
			env = append(env, "NATS_SYNC="+o.Sync)
		}
		if err := d.start(o, "standalone", o.Binaries.Standalone, nil, env); err != nil {
			return nil, err
		}
		d.rebuild = func() *exec.Cmd {
			cmd := exec.Command(o.Binaries.Standalone, "rebuild")
			cmd.Env = append(os.Environ(), "NATS_URL="+d.NATS, "LOG_FORMAT=text")
			return cmd
		}
	case Separate:
		if err := d.startSeparate(o, api, natsAddr, common); err != nil {
			d.Kill()
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown topology %q", o.Topology)
	}
	if err := d.awaitAPI(ctx); err != nil {
		d.Kill()
		return nil, err
	}
	return d, nil
}

// startSeparate starts nats-server with the compose configuration, then
// the four stages, each as its own NATS user.
func (d *Deployment) startSeparate(o DeployOptions, api, natsAddr string, common []string) error {
	conf, err := natsConfig(o.Binaries.NATSConfig, o.DataDir, o.Sync, filepath.Dir(o.Log.Name()))
	if err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(natsAddr)
	monitor, err := freeAddr()
	if err != nil {
		return err
	}
	_, mport, _ := net.SplitHostPort(monitor)
	var env []string
	for _, u := range stageUsers {
		env = append(env, strings.ToUpper(u)+"_NATS_PASSWORD="+password(u))
	}
	args := []string{"-c", conf, "-a", host, "-p", port, "-m", mport}
	if err := d.start(o, "nats-server", filepath.Join(o.Binaries.Dir, "nats-server"), args, env); err != nil {
		return err
	}
	if err := d.awaitTCP(natsAddr, 30*time.Second); err != nil {
		return fmt.Errorf("nats-server: %w", err)
	}
	as := func(user string) []string {
		return append(append([]string{}, common...), "NATS_URL="+d.NATS, "NATS_USER="+user, "NATS_PASSWORD="+password(user))
	}
	for _, stage := range []string{"producers", "enricher", "projector"} {
		metrics, err := freeAddr()
		if err != nil {
			return err
		}
		if err := d.start(o, stage, filepath.Join(o.Binaries.Dir, stage), nil, append(as(stage), "METRICS_ADDR="+metrics)); err != nil {
			return err
		}
	}
	if err := d.start(o, "api", filepath.Join(o.Binaries.Dir, "api"), nil, append(as("api"), "API_ADDR="+api)); err != nil {
		return err
	}
	d.rebuild = func() *exec.Cmd {
		cmd := exec.Command(filepath.Join(o.Binaries.Dir, "projector"), "rebuild")
		cmd.Env = append(os.Environ(), append(as("admin"), "NATS_USER=admin")...)
		return cmd
	}
	return nil
}

// natsConfig writes the compose configuration into dir, beside its
// auth.conf, with the store in storeDir and another sync policy when one is
// asked for.
func natsConfig(path, storeDir, sync, dir string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the NATS configuration: %w", err)
	}
	conf := string(b)
	for old, new := range map[string]string{"store_dir: /data": "store_dir: " + strconv.Quote(storeDir)} {
		if !strings.Contains(conf, old) {
			return "", fmt.Errorf("%s has no %q to replace", path, old)
		}
		conf = strings.Replace(conf, old, new, 1)
	}
	if sync != "" {
		conf = strings.Replace(conf, "sync_interval: always", "sync_interval: "+sync, 1)
	}
	auth, err := os.ReadFile(filepath.Join(filepath.Dir(path), "auth.conf"))
	if err != nil {
		return "", fmt.Errorf("reading the NATS configuration: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "auth.conf"), auth, 0o600); err != nil {
		return "", err
	}
	out := filepath.Join(dir, "nats.conf")
	return out, os.WriteFile(out, []byte(conf), 0o600)
}

func (d *Deployment) start(o DeployOptions, name, bin string, args, env []string) error {
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Dir(o.Log.Name())
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = o.Log, o.Log
	// Its own group, so that a power loss kills every process it started;
	// and it dies with the harness.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait() }()
	d.procs = append(d.procs, c)
	return nil
}

// awaitAPI waits until the API answers /healthz, bounded.
func (d *Deployment) awaitAPI(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if exited, err := d.Exited(); exited {
			return fmt.Errorf("exited at start: %v", err)
		}
		resp, err := http.Get(d.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.Join(errors.New("the API did not answer within 60s"), ctx.Err())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *Deployment) awaitTCP(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		if exited, err := d.Exited(); exited {
			return fmt.Errorf("exited at start: %v", err)
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s within %s", addr, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill ends every process at once (SIGKILL to each group), as a power loss
// does, and waits until they are gone.
func (d *Deployment) Kill() {
	for _, c := range d.procs {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	}
	for _, c := range d.procs {
		err := <-c.done
		c.done <- err
	}
}

// Stop asks every process to stop (SIGTERM; the stages before their NATS
// server) and waits up to 30 s each, then kills.
func (d *Deployment) Stop() error {
	var errs []error
	for i := len(d.procs) - 1; i >= 0; i-- {
		c := d.procs[i]
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-c.done:
			c.done <- err
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", c.name, err))
			}
		case <-time.After(30 * time.Second):
			d.Kill()
			return fmt.Errorf("%s did not stop within 30s of SIGTERM", c.name)
		}
	}
	return errors.Join(errs...)
}

// Exited reports whether a process has ended, and how.
func (d *Deployment) Exited() (bool, error) {
	for _, c := range d.procs {
		select {
		case err := <-c.done:
			c.done <- err
			return true, fmt.Errorf("%s: %v", c.name, err)
		default:
		}
	}
	return false, nil
}

// Rebuild is the README's live rebuild of this deployment's view.
func (d *Deployment) Rebuild() *exec.Cmd { return d.rebuild() }

// Describe lists the streams and consumers of the deployment's server, for
// a failure's message.
func (d *Deployment) Describe(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := natsgo.Connect(d.NATS, natsgo.Timeout(5*time.Second), natsgo.UserInfo("admin", password("admin")))
	if err != nil {
		return "NATS: " + err.Error()
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return "JetStream: " + err.Error()
	}
	var b strings.Builder
	names := js.StreamNames(ctx)
	for name := range names.Name() {
		st, err := js.Stream(ctx, name)
		if err != nil {
			fmt.Fprintf(&b, "stream %s: %v\n", name, err)
			continue
		}
		i := st.CachedInfo()
		fmt.Fprintf(&b, "stream %s: %d messages, sequences %d..%d\n", name, i.State.Msgs, i.State.FirstSeq, i.State.LastSeq)
		for c := range st.ListConsumers(ctx).Info() {
			fmt.Fprintf(&b, "  consumer %s: delivered %d, ack floor %d, pending %d, waiting %d, ack pending %d\n",
				c.Name, c.Delivered.Stream, c.AckFloor.Stream, c.NumPending, c.NumWaiting, c.NumAckPending)
		}
	}
	if err := names.Err(); err != nil {
		fmt.Fprintf(&b, "listing streams: %v\n", err)
	}
	return b.String()
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
