package api

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// NewToken writes a new random API token to w, with its API_TOKENS_FILE line.
func NewToken(w io.Writer) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	token := base64.RawURLEncoding.EncodeToString(b)
	_, err := fmt.Fprintf(w, "token (give to the client, keep secret): %s\nline for API_TOKENS_FILE:                %s\n", token, TokenLine(token))
	return err
}

// HashToken reads a token from r and writes its API_TOKENS_FILE line to w.
func HashToken(r io.Reader, w io.Writer) error {
	line, err := bufio.NewReader(r).ReadString('\n')
	token := strings.TrimSpace(line)
	if token == "" {
		return errors.Join(errors.New("no token on standard input"), err)
	}
	_, err = fmt.Fprintln(w, TokenLine(token))
	return err
}

// ReloadOnHangup re-reads the tokens file on SIGHUP until ctx ends.
func (a *API) ReloadOnHangup(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			a.ReloadTokens()
		}
	}
}
