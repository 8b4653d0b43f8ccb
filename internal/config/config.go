// Package config loads the pipeline's configuration from the environment,
// with command-line flags of the same meaning taking precedence.
package config

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/incidentpipe/pipeline/internal/topology"
)

// Secret is a credential. It never prints: not in logs, errors or %v.
type Secret string

// String hides the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// LogValue hides the secret from slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// GoString hides the secret from %#v.
func (s Secret) GoString() string { return s.String() }

// Reveal returns the secret itself, for the one place that sends it.
func (s Secret) Reveal() string { return string(s) }

// Config is every setting of every binary; each uses what it needs.
type Config struct {
	NATSURL      string // empty in standalone: embedded server
	NATSListen   string // embedded server's client address
	NATSUser     string
	NATSPassword Secret
	NATSCreds    string // path of a NATS credentials file
	DataDir      string
	// NATSSync is the embedded server's fsync policy (NATS_SYNC).
	NATSSync SyncPolicy

	UpstreamURL      string // empty in standalone: built-in simulator
	UpstreamUser     string
	UpstreamPassword Secret
	UpstreamTimeout  time.Duration
	UpstreamMaxBody  int64
	// UpstreamMaxInFlight bounds the response bytes all polls hold at once.
	UpstreamMaxInFlight int64
	PollInterval        time.Duration
	// PollMaxPages, PollMaxBytes and PollMaxTime bound one poll of a type.
	PollMaxPages int
	PollMaxBytes int64
	PollMaxTime  time.Duration

	UpstreamCAFile string // PEM roots for the upstream's certificate, instead of the system's

	APIAddr         string
	APITokensFile   string
	MetricsAuth     bool
	APITLSCert      string
	APITLSKey       string
	APIRateLimit    float64
	RiskHalfLife    time.Duration
	RiskCursorBytes int64
	MetricsAddr     string

	EventsMaxStreams   int           // 0: a quarter of the open-file limit
	EventsMaxPerClient int           // 0: the API's default
	EventsMaxLifetime  time.Duration // 0: the API's default

	NATSCAFile  string
	NATSTLSCert string
	NATSTLSKey  string
	LogFormat   string
	LogLevel    string

	Topology topology.Options

	// Args are the command-line arguments left after the flags.
	Args []string
}

// SyncPolicy is when JetStream fsyncs what it stores.
type SyncPolicy struct {
	// Always fsyncs each write before acknowledging it.
	Always bool
	// Interval is the fsync period when Always is false.
	Interval time.Duration
}

// ParseSyncPolicy reads "always" or a positive duration.
func ParseSyncPolicy(v string) (SyncPolicy, error) {
	if strings.EqualFold(v, "always") {
		return SyncPolicy{Always: true}, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return SyncPolicy{}, errors.New(`must be "always" or a positive duration such as 2m`)
	}
	return SyncPolicy{Interval: d}, nil
}

// String is the policy as NATS_SYNC spells it.
func (p SyncPolicy) String() string {
	if p.Always {
		return "always"
	}
	return p.Interval.String()
}

// setting is one configuration entry: its variable, flag, default and help.
type setting struct {
	env, def, help string
	set            func(c *Config, v string) error
}

func settings() []setting {
	str := func(dst func(*Config) *string) func(*Config, string) error {
		return func(c *Config, v string) error { *dst(c) = v; return nil }
	}
	dur := func(dst func(*Config) *time.Duration) func(*Config, string) error {
		return func(c *Config, v string) error {
			d, err := time.ParseDuration(v)
			if err != nil {
				return err
			}
			if d < 0 {
				return errors.New("must not be negative")
			}
			*dst(c) = d
			return nil
		}
	}
	atLeast := func(least int64, dst func(*Config) *int64) func(*Config, string) error {
		return func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < least {
				return fmt.Errorf("must be a number of bytes, at least %d", least)
			}
			*dst(c) = n
			return nil
		}
	}
	bytes := func(dst func(*Config) *int64) func(*Config, string) error {
		return func(c *Config, v string) error {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return errors.New("must be a number of bytes (0: no cap)")
			}
			*dst(c) = n
			return nil
		}
	}
	return []setting{
		{"NATS_URL", "", "NATS server URL; empty in standalone starts an embedded server", str(func(c *Config) *string { return &c.NATSURL })},
		{"NATS_LISTEN", "127.0.0.1:4222", "embedded NATS server client address (standalone)", str(func(c *Config) *string { return &c.NATSListen })},
		{"NATS_USER", "", "NATS user name", str(func(c *Config) *string { return &c.NATSUser })},
		{"NATS_PASSWORD", "", "NATS password (or NATS_PASSWORD_FILE)", func(c *Config, v string) error { c.NATSPassword = Secret(v); return nil }},
		{"NATS_CREDS", "", "NATS credentials file", str(func(c *Config) *string { return &c.NATSCreds })},
		{"NATS_REPLICAS", "1", "replicas of every stream and bucket", func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 5 {
				return errors.New("must be a whole number from 1 to 5")
			}
			c.Topology.Replicas = n
			return nil
		}},
		{"NATS_SYNC", "always", "when the embedded server fsyncs JetStream writes: always (before acknowledging each write; nothing shown is lost on power loss) or an interval such as 2m (faster; a power loss loses up to that much)", func(c *Config, v string) error {
			p, err := ParseSyncPolicy(v)
			c.NATSSync = p
			return err
		}},
		{"DATA_DIR", "./data", "JetStream storage of the embedded server (standalone)", str(func(c *Config) *string { return &c.DataDir })},
		{"UPSTREAM_URL", "", "upstream incident API; empty in standalone runs the built-in simulator", str(func(c *Config) *string { return &c.UpstreamURL })},
		{"UPSTREAM_USER", "", "upstream basic-auth user (or UPSTREAM_USER_FILE)", str(func(c *Config) *string { return &c.UpstreamUser })},
		{"UPSTREAM_PASSWORD", "", "upstream basic-auth password (or UPSTREAM_PASSWORD_FILE)", func(c *Config, v string) error { c.UpstreamPassword = Secret(v); return nil }},
		{"UPSTREAM_TIMEOUT", "30s", "timeout of one upstream request", dur(func(c *Config) *time.Duration { return &c.UpstreamTimeout })},
		{"UPSTREAM_MAX_BODY", "67108864", "largest upstream incident (and identities answer) read, in bytes; a longer incident is dead-lettered", atLeast(1024, func(c *Config) *int64 { return &c.UpstreamMaxBody })},
		{"UPSTREAM_MAX_IN_FLIGHT", "268435456", "response bytes all upstream requests may hold at once (at least UPSTREAM_MAX_BODY)", atLeast(1<<20, func(c *Config) *int64 { return &c.UpstreamMaxInFlight })},
		{"POLL_MAX_PAGES", "10000", "pages one poll of a type reads at most; the next poll goes on from there", func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return errors.New("must be a whole number of pages, at least 1")
			}
			c.PollMaxPages = n
			return nil
		}},
		{"POLL_MAX_BYTES", "1073741824", "response bytes one poll of a type reads at most; the next poll goes on from there", atLeast(1024, func(c *Config) *int64 { return &c.PollMaxBytes })},
		{"POLL_MAX_TIME", "10m", "how long one poll of a type reads pages at most; the next poll goes on from there", dur(func(c *Config) *time.Duration { return &c.PollMaxTime })},
		{"POLL_INTERVAL", "1m", "how often each incident type and the identities are polled", dur(func(c *Config) *time.Duration { return &c.PollInterval })},
		{"API_ADDR", "", "address of the HTTP API (and /metrics in standalone); default 127.0.0.1:9000, or :9000 with API_TOKENS_FILE", str(func(c *Config) *string { return &c.APIAddr })},
		{"API_TOKENS_FILE", "", "file of allowed bearer tokens (sha256:<hex> lines); unset leaves the API open", str(func(c *Config) *string { return &c.APITokensFile })},
		{"METRICS_AUTH", "false", "require the API tokens on /metrics too", func(c *Config, v string) error {
			b, err := strconv.ParseBool(v)
			c.MetricsAuth = b
			return err
		}},
		{"API_TLS_CERT", "", "PEM certificate: serve the API over HTTPS (with API_TLS_KEY)", str(func(c *Config) *string { return &c.APITLSCert })},
		{"API_TLS_KEY", "", "PEM private key of API_TLS_CERT", str(func(c *Config) *string { return &c.APITLSKey })},
		{"API_RATE_LIMIT", "0", "requests per second per client address (0: no limit)", func(c *Config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f < 0 {
				return errors.New("must be a number of requests per second (0: no limit)")
			}
			c.APIRateLimit = f
			return nil
		}},
		{"EVENTS_MAX_STREAMS", "0", "/events streams open at once at most (0: a quarter of the process's open-file limit); past it 503 with Retry-After", count(func(c *Config) *int { return &c.EventsMaxStreams })},
		{"EVENTS_MAX_PER_CLIENT", "16", "/events streams one token (or one client address without tokens) holds open at most", count(func(c *Config) *int { return &c.EventsMaxPerClient })},
		{"EVENTS_MAX_LIFETIME", "1h", "how long one /events stream lasts at most; the browser reconnects with Last-Event-ID", dur(func(c *Config) *time.Duration { return &c.EventsMaxLifetime })},
		{"RISK_CURSOR_BYTES", "67108864", "memory for the rankings open /risk cursors walk (each valid 10 minutes after its last page), in bytes", atLeast(1<<20, func(c *Config) *int64 { return &c.RiskCursorBytes })},
		{"RISK_HALF_LIFE", "0s", "risk scores halve per this age of an incident (0: no decay)", dur(func(c *Config) *time.Duration { return &c.RiskHalfLife })},
		{"UPSTREAM_CA_FILE", "", "PEM CA certificates that sign the upstream's certificate (default: the system's)", str(func(c *Config) *string { return &c.UpstreamCAFile })},
		{"NATS_CA_FILE", "", "PEM CA certificates of the NATS server (TLS)", str(func(c *Config) *string { return &c.NATSCAFile })},
		{"NATS_TLS_CERT", "", "PEM client certificate for NATS (with NATS_TLS_KEY)", str(func(c *Config) *string { return &c.NATSTLSCert })},
		{"NATS_TLS_KEY", "", "PEM private key of NATS_TLS_CERT", str(func(c *Config) *string { return &c.NATSTLSKey })},
		{"METRICS_ADDR", ":9100", "address of /metrics, /healthz and /readyz of the non-API binaries", str(func(c *Config) *string { return &c.MetricsAddr })},
		{"LOG_FORMAT", "json", "log format: json or text", str(func(c *Config) *string { return &c.LogFormat })},
		{"LOG_LEVEL", "info", "log level: debug, info, warn, error", str(func(c *Config) *string { return &c.LogLevel })},
		{"RAW_MAX_AGE", "0s", "how long INCIDENTS_RAW keeps incidents (0: forever, so the view can always be rebuilt)", dur(func(c *Config) *time.Duration { return &c.Topology.RawMaxAge })},
		{"ENRICHED_MAX_AGE", "0s", "how long INCIDENTS_ENRICHED keeps incidents (0: forever)", dur(func(c *Config) *time.Duration { return &c.Topology.EnrichedMaxAge })},
		{"DLQ_MAX_AGE", "720h", "how long INCIDENTS_DLQ keeps what failed", dur(func(c *Config) *time.Duration { return &c.Topology.DLQMaxAge })},
		{"RAW_MAX_BYTES", "0", "size cap of INCIDENTS_RAW in bytes (0: none)", bytes(func(c *Config) *int64 { return &c.Topology.RawMaxBytes })},
		{"ENRICHED_MAX_BYTES", "0", "size cap of INCIDENTS_ENRICHED in bytes (0: none)", bytes(func(c *Config) *int64 { return &c.Topology.EnrichedMaxBytes })},
		{"DLQ_MAX_BYTES", "1073741824", "size cap of INCIDENTS_DLQ in bytes (0: none)", bytes(func(c *Config) *int64 { return &c.Topology.DLQMaxBytes })},
	}
}

// count parses a whole number, at least 0.
func count(field func(*Config) *int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return errors.New("must be a whole number, at least 0")
		}
		*field(c) = n
		return nil
	}
}

// hasFileVariant reports whether env may instead be read from env_FILE.
func hasFileVariant(env string) bool {
	return env == "UPSTREAM_USER" || env == "UPSTREAM_PASSWORD" || env == "NATS_PASSWORD"
}

// flagName turns NATS_URL into nats-url.
func flagName(env string) string { return strings.ToLower(strings.ReplaceAll(env, "_", "-")) }

// Load reads the configuration: defaults, then the environment (getenv),
// then VAR_FILE for secrets, then flags in args.
func Load(name string, args []string, getenv func(string) string) (Config, error) {
	c := Config{Topology: topology.DefaultOptions()}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// Flags show their built-in defaults, never what the environment holds:
	// usage goes to stderr, and the environment holds secrets.
	flags := map[string]*string{}
	for _, s := range settings() {
		flags[s.env] = fs.String(flagName(s.env), s.def, s.help+" ($"+s.env+")")
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	values := map[string]string{}
	for _, s := range settings() {
		if given[flagName(s.env)] {
			values[s.env] = *flags[s.env]
			continue
		}
		v := getenv(s.env)
		if v == "" && hasFileVariant(s.env) {
			if path := getenv(s.env + "_FILE"); path != "" {
				b, err := os.ReadFile(path)
				if err != nil {
					return Config{}, fmt.Errorf("reading %s_FILE: %w", s.env, err)
				}
				v = strings.TrimRight(string(b), "\r\n")
			}
		}
		if v == "" {
			v = s.def
		}
		values[s.env] = v
	}
	c.Args = fs.Args()
	for _, s := range settings() {
		if err := s.set(&c, values[s.env]); err != nil {
			return Config{}, fmt.Errorf("%s: %w", s.env, err)
		}
	}
	if c.APIAddr == "" {
		// Open to every interface only when a token is required.
		c.APIAddr = "127.0.0.1:9000"
		if c.APITokensFile != "" {
			c.APIAddr = ":9000"
		}
	}
	if (c.APITLSCert == "") != (c.APITLSKey == "") {
		return Config{}, errors.New("API_TLS_CERT and API_TLS_KEY go together")
	}
	if (c.NATSTLSCert == "") != (c.NATSTLSKey == "") {
		return Config{}, errors.New("NATS_TLS_CERT and NATS_TLS_KEY go together")
	}
	if c.UpstreamMaxInFlight < c.UpstreamMaxBody {
		return Config{}, errors.New("UPSTREAM_MAX_IN_FLIGHT: must be at least UPSTREAM_MAX_BODY, or a body that large could never be read")
	}
	if c.UpstreamTimeout <= 0 {
		return Config{}, errors.New("UPSTREAM_TIMEOUT: must be positive")
	}
	if c.PollInterval < 100*time.Millisecond {
		return Config{}, errors.New("POLL_INTERVAL: must be at least 100ms")
	}
	// Copies of the producers publish a new incident within a poll or two
	// of each other; JetStream holds every id of the window in memory, so
	// the window follows the interval instead of a bulk load's whole size.
	c.Topology.DuplicateWindow = max(2*time.Minute, 3*c.PollInterval)
	return c, nil
}

// Variables lists every environment variable Load reads, with its help,
// for documentation and tests.
func Variables() map[string]string {
	m := map[string]string{}
	for _, s := range settings() {
		m[s.env] = s.help
		if hasFileVariant(s.env) {
			m[s.env+"_FILE"] = "file holding " + s.env
		}
	}
	return m
}
