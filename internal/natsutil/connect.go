package natsutil

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ConnectOptions say where and as whom to connect.
type ConnectOptions struct {
	URL       string                     // ignored when InProcess is set
	InProcess nats.InProcessConnProvider // connect in-process to an embedded server
	Name      string                     // client name, shown by `nats server report connections`
	User      string
	Password  string
	Creds     string // credentials file
	// CAFile, CertFile and KeyFile configure TLS to the server.
	CAFile, CertFile, KeyFile string
	Logger                    *slog.Logger
	// OnClosed, when set, is called if the connection closes for good
	// other than by Close or Drain: nats.go gives up on a connection the
	// server ended with an error it does not retry (a protocol violation
	// such as a subject over the control-line limit), in-process ones
	// included. Nothing reconnects it; its owner must start again.
	OnClosed func(err error)
	// InOrder tries the servers of URL in the order given rather than
	// shuffled (tests use it to put every client on one server). Servers
	// named in URL are never forgotten, where those a server advertised
	// are when it stops advertising them (a server cut off from its peers
	// does): list every server of a cluster in URL.
	InOrder bool
}

// Connect connects to NATS, retrying the first connection until ctx ends, and
// reconnecting forever afterwards; in a cluster, also when JetStream cannot
// be reached over a connection that is up (see watchJetStream).
func Connect(ctx context.Context, o ConnectOptions) (*nats.Conn, jetstream.JetStream, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The last reason a connection attempt failed, to say why when the
	// first connection never comes; logged when it changes.
	var mu sync.Mutex
	var lastErr error
	opts := []nats.Option{
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil && (lastErr == nil || lastErr.Error() != err.Error()) {
				log.Warn("cannot connect to NATS; retrying", "error", err)
			}
			lastErr = err
		}),
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", "error", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("reconnected to NATS", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Warn("NATS error", "subject", subject, "error", err)
		}),
	}
	if o.InProcess != nil {
		opts = append(opts, nats.InProcessServer(o.InProcess))
	}
	if o.OnClosed != nil {
		opts = append(opts, nats.ClosedHandler(func(c *nats.Conn) {
			if err := c.LastError(); err != nil {
				o.OnClosed(err)
			}
		}))
	}
	if o.InOrder {
		opts = append(opts, nats.DontRandomize())
	}
	if o.User != "" || o.Password != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	if o.CertFile != "" {
		opts = append(opts, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	url := o.URL
	if url == "" {
		url = nats.DefaultURL
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to NATS: %w", err)
	}
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			mu.Lock()
			defer mu.Unlock()
			if lastErr != nil {
				return nil, nil, fmt.Errorf("connecting to NATS: %w (last attempt: %w)", ctx.Err(), lastErr)
			}
			return nil, nil, fmt.Errorf("connecting to NATS: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncTimeout(PublishTimeout),
		jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("connecting to JetStream: %w", err)
	}
	go watchJetStream(nc, js, log)
	return nc, js, nil
}

// PublishTimeout bounds how long any JetStream publish acknowledgement is
// awaited: a server that cannot store (full disk, lost quorum) makes
// publishes fail instead of hanging.
const PublishTimeout = 10 * time.Second
