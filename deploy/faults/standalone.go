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
	"strings"
	"syscall"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Standalone is the standalone binary running as a child process, as an
// operator runs it: its DATA_DIR on the file system under test.
type Standalone struct {
	API  string // http://127.0.0.1:port
	NATS string // the embedded server's client URL
	cmd  *exec.Cmd
	done chan error
}

// StandaloneOptions say how to start it.
type StandaloneOptions struct {
	Binary   string
	DataDir  string
	Upstream *Upstream
	// Sync is NATS_SYNC (empty: the binary's default).
	Sync string
	// PollInterval is POLL_INTERVAL.
	PollInterval time.Duration
	// Log receives the process's output (not on the file system under test).
	Log *os.File
}

// StartStandalone starts the binary and waits until its API answers.
func StartStandalone(ctx context.Context, o StandaloneOptions) (*Standalone, error) {
	api, err := freeAddr()
	if err != nil {
		return nil, err
	}
	nats, err := freeAddr()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.Binary)
	cmd.Dir = filepath.Dir(o.Binary)
	cmd.Env = append(os.Environ(),
		"DATA_DIR="+o.DataDir, "API_ADDR="+api, "NATS_LISTEN="+nats,
		"UPSTREAM_URL="+o.Upstream.URL, "UPSTREAM_USER="+o.Upstream.User, "UPSTREAM_PASSWORD="+o.Upstream.Password,
		"POLL_INTERVAL="+o.PollInterval.String(), "UPSTREAM_TIMEOUT=5s", "LOG_FORMAT=text",
	)
	if o.Sync != "" {
		cmd.Env = append(cmd.Env, "NATS_SYNC="+o.Sync)
	}
	cmd.Stdout, cmd.Stderr = o.Log, o.Log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the standalone: %w", err)
	}
	s := &Standalone{API: "http://" + api, NATS: "nats://" + nats, cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-s.done:
			s.done <- err
			return nil, fmt.Errorf("the standalone exited at start: %v", err)
		default:
		}
		resp, err := http.Get(s.API + "/healthz")
		if err == nil {
			resp.Body.Close()
			return s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.Kill()
			return nil, errors.Join(errors.New("the standalone's API did not answer within 60s"), ctx.Err())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill ends the process at once (SIGKILL to its group), as a power loss
// does, and waits until it is gone.
func (s *Standalone) Kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	err := <-s.done
	s.done <- err
}

// Stop asks the process to stop (SIGTERM) and waits up to 30 s, then kills.
func (s *Standalone) Stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err
		return err
	case <-time.After(30 * time.Second):
		s.Kill()
		return errors.New("the standalone did not stop within 30s of SIGTERM")
	}
}

// Exited reports whether the process has ended, and how.
func (s *Standalone) Exited() (bool, error) {
	select {
	case err := <-s.done:
		s.done <- err
		return true, err
	default:
		return false, nil
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Describe lists the streams and consumers of the process's server, for a
// failure's message.
func (s *Standalone) Describe(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, err := natsgo.Connect(s.NATS, natsgo.Timeout(5*time.Second))
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
