// Package embedded starts an in-process NATS server with JetStream: for the
// standalone process and tests only, so that no stage binary links the
// server.
package embedded

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options configure an in-process NATS server with JetStream.
type Options struct {
	// Listen is the client address, host:port; port -1 picks a free one.
	Listen string
	// StoreDir holds JetStream's files.
	StoreDir string
	// ServerName names the server (default "incidents").
	ServerName string
	// MaxStore caps JetStream's file storage in bytes (0: the disk's).
	MaxStore int64
	// MaxPayload is the largest message accepted (0: MaxPayload).
	MaxPayload int32
	// SyncAlways fsyncs every JetStream write before it is acknowledged
	// (and before any consumer or watcher sees it); otherwise JetStream
	// fsyncs every SyncInterval and what was written since is lost on a
	// power loss.
	SyncAlways bool
	// SyncInterval is the fsync period when SyncAlways is off (0:
	// nats-server's default, 2 minutes).
	SyncInterval time.Duration
}

// MaxPayload is the largest message the embedded server accepts by default.
// The view never needs more than NATS's default 1 MB (documents are stored
// in pieces); the headroom is for unattributed documents and operators.
const MaxPayload = 8 << 20

// Start starts a NATS server with JetStream and waits until it
// accepts connections.
func Start(o Options) (*server.Server, error) {
	host, portText, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("NATS_LISTEN %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("NATS_LISTEN %q: bad port", o.Listen)
	}
	if o.ServerName == "" {
		o.ServerName = "incidents"
	}
	opts := &server.Options{
		ServerName:        o.ServerName,
		Host:              host,
		Port:              port,
		JetStream:         true,
		StoreDir:          o.StoreDir,
		MaxPayload:        cmp.Or(o.MaxPayload, MaxPayload),
		JetStreamMaxStore: o.MaxStore,
		SyncAlways:        o.SyncAlways,
		SyncInterval:      o.SyncInterval,
		NoSigs:            true,
		NoLog:             true,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("starting embedded NATS: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, errors.New("starting embedded NATS: not ready after 15s (is NATS_LISTEN in use?)")
	}
	return s, nil
}
