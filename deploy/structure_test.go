package deploy_test

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/incidentpipe/pipeline/internal/testkit"
)

const module = "github.com/incidentpipe/pipeline/"

// floor is how high a package of the repository stands: internal at the
// bottom, the four stages above it, deploy on top. An import may only run
// down (or within internal, or within deploy).
func floor(pkg string) (int, string) {
	rest := strings.TrimPrefix(pkg, module)
	top, _, _ := strings.Cut(rest, "/")
	switch top {
	case "internal":
		return 1, top
	case "api", "enricher", "projector", "producers":
		return 2, top
	case "deploy":
		return 3, top
	}
	return 0, top
}

// TestImportsRunDown: no package imports one on its own floor in another
// room (a stage another stage) or one above it.
func TestImportsRunDown(t *testing.T) {
	root, err := testkit.WorkspaceRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, module+"...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		from, fromRoom := floor(fields[0])
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, module) {
				continue
			}
			to, toRoom := floor(imp)
			checked++
			if to > from || (to == from && to == 2 && toRoom != fromRoom) {
				t.Errorf("%s imports %s: an arrow that runs up, or across the stages", fields[0], imp)
			}
		}
	}
	if checked < 50 {
		t.Fatalf("only %d imports within the repository checked", checked)
	}
}

// wireStrings are JetStream's wire details: a KV subject, an API subject,
// the KV and batch headers. They are named once, in internal/topology.
var wireStrings = []string{`"$KV.`, `"$JS.`, `"KV-Operation"`, `"Nats-Rollup"`, `"Nats-Batch-`, `"Nats-Expected-`, `"Nats-Msg-Id"`}

// TestWireStringsOnlyInTopology: no code outside internal/topology (tests
// aside) spells a wire string.
func TestWireStringsOnlyInTopology(t *testing.T) {
	root, err := testkit.WorkspaceRoot()
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || rel == filepath.Join("internal", "topology") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		files++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, w := range wireStrings {
			if strings.Contains(string(b), w) {
				t.Errorf("%s spells %s: name it in internal/topology", rel, w)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 50 {
		t.Fatalf("only %d Go files read", files)
	}
}
