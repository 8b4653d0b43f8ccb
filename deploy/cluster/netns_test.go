package cluster_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/incidentpipe/pipeline/deploy/faults/lazyfs"
	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// netCluster is three nats-server processes, each in a network namespace
// of its own, on one bridge (in a namespace of its own too) that this host
// reaches through one veth: partitions are iptables rules inside a node's
// namespace, so its clients still reach it while its peers do not. The test
// creates every namespace, link and rule, and removes them.
type netCluster struct {
	t      *testing.T
	id     string
	subnet string   // "10.213.N"
	nodes  []string // namespaces n1..n3
	procs  []*exec.Cmd
	bin    string
	dir    string
	lazy   []*lazyfs.FS // each node's store, when on lazyfs (powerLoss)
}

// ip is the address of node i (0-based) in the cluster's subnet.
func (c *netCluster) ip(i int) string { return fmt.Sprintf("%s.%d", c.subnet, 11+i) }

// ClientURL is node i's client URL.
func (c *netCluster) ClientURL(i int) string { return fmt.Sprintf("nats://%s:4222", c.ip(i)) }

// URLs is every node's client URL, comma-separated.
func (c *netCluster) URLs() string {
	var urls []string
	for i := range c.nodes {
		urls = append(urls, c.ClientURL(i))
	}
	return strings.Join(urls, ",")
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// startNetClusterOn starts the cluster, each node's store on a lazyfs of
// its own when lazy is set; it needs root, ip and iptables (and FUSE).
func startNetClusterOn(t *testing.T, lazy bool) *netCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Require(t, "root (network namespaces)")
	}
	for _, p := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(p); err != nil {
			testkit.Require(t, p)
		}
	}
	c := &netCluster{t: t, id: fmt.Sprintf("%d", os.Getpid()%100000), subnet: fmt.Sprintf("10.213.%d", 1+rand.IntN(250)),
		bin: testkit.Build(t, "github.com/nats-io/nats-server/v2"), dir: t.TempDir()}
	sw, host := "isw"+c.id, "ih"+c.id
	t.Cleanup(func() {
		for _, p := range c.procs {
			if p.Process != nil {
				_ = p.Process.Kill()
				_ = p.Wait()
			}
		}
		for _, ns := range append(c.nodes, sw) {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
		_ = exec.Command("ip", "link", "del", host).Run()
	})
	sh(t, "ip", "netns", "add", sw)
	sh(t, "ip", "-n", sw, "link", "add", "br0", "type", "bridge")
	sh(t, "ip", "-n", sw, "link", "set", "br0", "up")
	sh(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "up0", "netns", sw)
	sh(t, "ip", "-n", sw, "link", "set", "up0", "master", "br0", "up")
	sh(t, "ip", "addr", "add", c.subnet+".1/24", "dev", host)
	sh(t, "ip", "link", "set", host, "up")
	for i := range 3 {
		ns := fmt.Sprintf("in%d-%s", i+1, c.id)
		c.nodes = append(c.nodes, ns)
		sh(t, "ip", "netns", "add", ns)
		port := fmt.Sprintf("p%d", i+1)
		sh(t, "ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		sh(t, "ip", "-n", sw, "link", "set", port, "master", "br0", "up")
		sh(t, "ip", "-n", ns, "addr", "add", c.ip(i)+"/24", "dev", "eth0")
		sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	if lazy {
		if err := lazyfs.Available(); err != nil {
			testkit.Require(t, "FUSE ("+err.Error()+")")
		}
		for i := range c.nodes {
			store := c.store(i)
			if err := os.MkdirAll(store, 0o755); err != nil {
				t.Fatal(err)
			}
			f := lazyfs.New(lazyfs.Options{Mode: lazyfs.DropUnsynced})
			if err := f.Mount(store); err != nil {
				t.Fatal(err)
			}
			c.lazy = append(c.lazy, f)
		}
		// Registered after the namespaces' cleanup: runs before it, once
		// the servers are killed below.
		t.Cleanup(func() {
			for i, f := range c.lazy {
				c.kill(i)
				_ = f.Unmount()
			}
		})
	}
	for i := range c.nodes {
		c.start(i)
	}
	return c
}

// store is node i's JetStream directory.
func (c *netCluster) store(i int) string { return filepath.Join(c.dir, fmt.Sprintf("n%d", i+1)) }

// powerLoss cuts node i's power: whatever its store did not fsync is gone,
// the process dies with it, and the node starts again on what survived.
func (c *netCluster) powerLoss(i int) {
	c.t.Helper()
	c.lazy[i].PowerCut()
	c.kill(i)
	if err := c.lazy[i].Unmount(); err != nil {
		c.t.Fatalf("unmounting n%d's store: %v", i+1, err)
	}
	if err := c.lazy[i].Mount(c.store(i)); err != nil {
		c.t.Fatalf("mounting n%d's store again: %v", i+1, err)
	}
}

// start starts node i's nats-server (again, after a kill) on its store.
func (c *netCluster) start(i int) {
	t := c.t
	t.Helper()
	var routes []string
	for j := range c.nodes {
		if j != i {
			routes = append(routes, fmt.Sprintf("%q", "nats-route://"+c.ip(j)+":6222"))
		}
	}
	conf := fmt.Sprintf(`server_name: n%d
listen: "%s:4222"
max_payload: %d
jetstream { store_dir: %q, sync_interval: always }
cluster { name: incidents, listen: "%s:6222", routes: [%s], ping_interval: "1s", ping_max: 3 } # as deploy/nats/cluster.conf
`, i+1, c.ip(i), embedded.MaxPayload, c.store(i), c.ip(i), strings.Join(routes, ", "))
	file := filepath.Join(c.dir, fmt.Sprintf("n%d.conf", i+1))
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(c.dir, fmt.Sprintf("n%d.log", i+1)))
	if err != nil {
		t.Fatal(err)
	}
	// nsenter joins the node's network namespace only: ip netns exec would
	// also give it a mount namespace of its own, holding a copy of a lazyfs
	// mount that a power loss must take away.
	cmd := exec.Command("nsenter", "--net=/var/run/netns/"+c.nodes[i], c.bin, "-c", file)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for len(c.procs) <= i {
		c.procs = append(c.procs, nil)
	}
	c.procs[i] = cmd
}

// kill kills node i as kill -9 would.
func (c *netCluster) kill(i int) {
	if p := c.procs[i]; p != nil && p.Process != nil {
		_ = p.Process.Kill()
		_ = p.Wait()
	}
}

// cutOff drops every packet between node i and its peers (both ways);
// its clients still reach it.
func (c *netCluster) cutOff(i int) {
	for j := range c.nodes {
		if j == i {
			continue
		}
		sh(c.t, "ip", "netns", "exec", c.nodes[i], "iptables", "-A", "INPUT", "-s", c.ip(j), "-j", "DROP")
		sh(c.t, "ip", "netns", "exec", c.nodes[i], "iptables", "-A", "OUTPUT", "-d", c.ip(j), "-j", "DROP")
	}
}

// heal removes node i's partition rules.
func (c *netCluster) heal(i int) {
	sh(c.t, "ip", "netns", "exec", c.nodes[i], "iptables", "-F")
}

// logs returns every node's log, for a failure's message.
func (c *netCluster) logs() string {
	var b strings.Builder
	for i := range c.nodes {
		data, _ := os.ReadFile(filepath.Join(c.dir, fmt.Sprintf("n%d.log", i+1)))
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		fmt.Fprintf(&b, "--- n%d (last lines)\n%s\n", i+1, strings.Join(lines[max(0, len(lines)-15):], "\n"))
	}
	return b.String()
}

// cutBetween drops every packet between nodes i and j only (each still
// reaches the third: a partition that is not transitive).
func (c *netCluster) cutBetween(i, j int) {
	sh(c.t, "ip", "netns", "exec", c.nodes[i], "iptables", "-A", "INPUT", "-s", c.ip(j), "-j", "DROP")
	sh(c.t, "ip", "netns", "exec", c.nodes[i], "iptables", "-A", "OUTPUT", "-d", c.ip(j), "-j", "DROP")
}

// pause stops node i's process (SIGSTOP): its sockets stay open, nothing
// answers; resume continues it.
func (c *netCluster) pause(i int)  { _ = c.procs[i].Process.Signal(syscall.SIGSTOP) }
func (c *netCluster) resume(i int) { _ = c.procs[i].Process.Signal(syscall.SIGCONT) }

// node is the index of the node named name ("n1".."n3"), or -1.
func (c *netCluster) node(name string) int {
	for i := range c.nodes {
		if name == fmt.Sprintf("n%d", i+1) {
			return i
		}
	}
	return -1
}
