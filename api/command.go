package api

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
)

// TokenCommands are `new-token` (make a random token and print it with its
// API_TOKENS_FILE line) and `hash-token` (print the line of a token read
// from standard input).
func TokenCommands() []app.Command {
	return []app.Command{
		{
			Name: "new-token",
			Help: "print a new random API token and its API_TOKENS_FILE line",
			Run: func(context.Context, config.Config, *slog.Logger) error {
				b := make([]byte, 32)
				if _, err := rand.Read(b); err != nil {
					return err
				}
				token := base64.RawURLEncoding.EncodeToString(b)
				fmt.Printf("token (give to the client, keep secret): %s\n", token)
				fmt.Printf("line for API_TOKENS_FILE:                %s\n", TokenLine(token))
				return nil
			},
		},
		{
			Name: "hash-token",
			Help: "read a token on standard input and print its API_TOKENS_FILE line",
			Run: func(context.Context, config.Config, *slog.Logger) error {
				line, err := bufio.NewReader(os.Stdin).ReadString('\n')
				token := strings.TrimSpace(line)
				if token == "" {
					return errors.Join(errors.New("no token on standard input"), err)
				}
				fmt.Println(TokenLine(token))
				return nil
			},
		},
	}
}

// OptionsFrom fills the security options of the API from the configuration.
func OptionsFrom(o Options, cfg config.Config) Options {
	o.TokensFile = cfg.APITokensFile
	o.MetricsAuth = cfg.MetricsAuth
	o.RateLimit = cfg.APIRateLimit
	return o
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
