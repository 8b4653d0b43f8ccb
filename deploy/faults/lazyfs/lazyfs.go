// Package lazyfs is a FUSE file system for fault tests that keeps what was
// written but not yet synced in memory, as a disk's page cache does, and
// loses it on a simulated power loss: the model of LazyFS, which Jepsen
// used to find lost writes in NATS.
//
// Everything lives in memory: the "disk" is each file's synced bytes, the
// page cache its current bytes. Names (create, rename, unlink, mkdir) are
// durable at once, as a journaled file system's metadata nearly is; data is
// durable once fsynced (or written through a descriptor opened O_SYNC or
// O_DSYNC). PowerCut decides what survives by the Mode, after which every
// operation fails with EIO until the file system is mounted again; the
// caller kills the processes that use it and unmounts, so that no kernel
// cache hands lost bytes back.
package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Mode says what a power loss keeps of the data not yet synced.
type Mode int

const (
	// DropUnsynced loses every byte written since the file's last sync.
	DropUnsynced Mode = iota
	// RenameKeepsData is DropUnsynced, but a file renamed over another
	// had its data written first, as ext4 does by default (auto_da_alloc).
	RenameKeepsData
	// RandomWriteBack keeps the unsynced data of a random subset of the
	// files (each whole or not at all), drops the rest's.
	RandomWriteBack
)

func (m Mode) String() string {
	switch m {
	case DropUnsynced:
		return "drop-unsynced"
	case RenameKeepsData:
		return "rename-keeps-data"
	case RandomWriteBack:
		return "random-write-back"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Op is an operation on the file system, as a Trigger sees it.
type Op struct {
	// Kind is "create", "mkdir", "write", "truncate", "fsync", "rename",
	// "unlink" or "rmdir".
	Kind string
	// Path is the file's path inside the mount; To is a rename's target.
	Path, To string
	// FirstWrite is set on the first write since the file system was mounted.
	FirstWrite bool
}

// Options configure a file system.
type Options struct {
	// Mode decides what a power loss keeps.
	Mode Mode
	// Seed drives RandomWriteBack.
	Seed uint64
	// Trigger, when set, sees every operation before it is done; when it
	// returns true the power is cut right then (the operation is not done
	// and fails with EIO) and Cut's channel closes.
	Trigger func(Op) bool
}

// FS is a file system that forgets unsynced data on a power loss.
type FS struct {
	opts Options

	mu      sync.Mutex
	root    *node
	nextIno uint64
	rng     *rand.Rand
	off     bool          // the power is cut: every operation fails
	cut     chan struct{} // closed by a power cut
	written bool          // a write happened since the mount
	server  *fuse.Server
	dir     string
}

// node is a file or directory of the model.
type node struct {
	ino      uint64
	mode     uint32 // type and permission bits
	children map[string]*node
	data     []byte // what reads see
	synced   []byte // what survives a power loss
	dirty    bool   // data differs from synced
	mtime    time.Time
}

func (n *node) isDir() bool { return n.mode&syscall.S_IFMT == syscall.S_IFDIR }

// sync makes the current data durable.
func (n *node) sync() {
	if n.dirty {
		n.synced = append(n.synced[:0], n.data...)
		n.dirty = false
	}
}

// New returns an empty file system.
func New(o Options) *FS {
	f := &FS{opts: o, nextIno: 2, rng: rand.New(rand.NewPCG(o.Seed, o.Seed^0x1a2f5))}
	f.root = &node{ino: 1, mode: syscall.S_IFDIR | 0o755, children: map[string]*node{}, mtime: time.Now()}
	return f
}

// Mount serves the file system at dir (an existing directory) until
// Unmount. A file system cut off by PowerCut comes back powered.
func (f *FS) Mount(dir string) error {
	f.mu.Lock()
	if f.server != nil {
		f.mu.Unlock()
		return errors.New("lazyfs: already mounted")
	}
	f.off, f.written, f.cut = false, false, make(chan struct{})
	f.mu.Unlock()
	zero := time.Duration(0)
	root := &fsNode{fs: f, n: f.root}
	server, err := fs.Mount(dir, root, &fs.Options{
		MountOptions: fuse.MountOptions{
			FsName: "lazyfs", Name: "lazyfs", DirectMount: true, MaxWrite: 1 << 20,
			DisableXAttrs: true,
		},
		// No kernel caching of names or attributes: sizes change at a power cut.
		EntryTimeout: &zero, AttrTimeout: &zero, NegativeTimeout: &zero,
		RootStableAttr: &fs.StableAttr{Ino: 1},
	})
	if err != nil {
		return fmt.Errorf("lazyfs: mounting at %s: %w", dir, err)
	}
	f.mu.Lock()
	f.server, f.dir = server, dir
	f.mu.Unlock()
	return nil
}

// Unmount takes the file system off its directory. Processes that still
// use it must be gone first; if the kernel still calls it busy, it is
// detached lazily.
func (f *FS) Unmount() error {
	f.mu.Lock()
	server, dir := f.server, f.dir
	f.server = nil
	f.mu.Unlock()
	if server == nil {
		return nil
	}
	var err error
	for range 50 {
		if err = server.Unmount(); err == nil {
			server.Wait()
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	if derr := syscall.Unmount(dir, syscall.MNT_DETACH); derr != nil {
		return fmt.Errorf("lazyfs: unmounting %s: %w (lazy: %v)", dir, err, derr)
	}
	server.Wait()
	return nil
}

// PowerCut loses what the Mode says of the unsynced data and fails every
// operation from now on, until the next Mount.
func (f *FS) PowerCut() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.powerCutLocked()
}

func (f *FS) powerCutLocked() {
	if f.off {
		return
	}
	f.off = true
	var walk func(n *node)
	walk = func(n *node) {
		for _, c := range n.children {
			walk(c)
		}
		if !n.dirty {
			return
		}
		if f.opts.Mode == RandomWriteBack && f.rng.IntN(2) == 0 {
			n.sync()
		}
		n.data = append(n.data[:0], n.synced...)
		n.dirty = false
	}
	walk(f.root)
	close(f.cut)
}

// Cut returns a channel that closes when the power is cut (by PowerCut or
// a Trigger) during the current mount.
func (f *FS) Cut() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cut == nil {
		f.cut = make(chan struct{})
	}
	return f.cut
}

// Dirty returns how many files hold data not yet synced.
func (f *FS) Dirty() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	count := 0
	var walk func(n *node)
	walk = func(n *node) {
		if n.dirty {
			count++
		}
		for _, c := range n.children {
			walk(c)
		}
	}
	walk(f.root)
	return count
}

// begin takes the lock for an operation: it fails when the power is off,
// or cuts the power when the Trigger says so. On success the caller holds
// f.mu.
func (f *FS) begin(op Op) syscall.Errno {
	f.mu.Lock()
	if f.off {
		f.mu.Unlock()
		return syscall.EIO
	}
	if op.Kind == "write" || op.Kind == "truncate" {
		op.FirstWrite = !f.written
		f.written = true
	}
	if f.opts.Trigger != nil && f.opts.Trigger(op) {
		f.powerCutLocked()
		f.mu.Unlock()
		return syscall.EIO
	}
	return 0
}

func (f *FS) newNode(mode uint32) *node {
	n := &node{ino: f.nextIno, mode: mode, mtime: time.Now()}
	f.nextIno++
	if n.isDir() {
		n.children = map[string]*node{}
	}
	return n
}

// fsNode is a node as the kernel sees it through go-fuse.
type fsNode struct {
	fs.Inode
	fs *FS
	n  *node
}

// handle remembers whether a descriptor writes through (O_SYNC, O_DSYNC).
type handle struct{ sync bool }

var (
	_ fs.NodeLookuper  = (*fsNode)(nil)
	_ fs.NodeReaddirer = (*fsNode)(nil)
	_ fs.NodeGetattrer = (*fsNode)(nil)
	_ fs.NodeSetattrer = (*fsNode)(nil)
	_ fs.NodeCreater   = (*fsNode)(nil)
	_ fs.NodeMkdirer   = (*fsNode)(nil)
	_ fs.NodeUnlinker  = (*fsNode)(nil)
	_ fs.NodeRmdirer   = (*fsNode)(nil)
	_ fs.NodeRenamer   = (*fsNode)(nil)
	_ fs.NodeOpener    = (*fsNode)(nil)
	_ fs.NodeReader    = (*fsNode)(nil)
	_ fs.NodeWriter    = (*fsNode)(nil)
	_ fs.NodeFsyncer   = (*fsNode)(nil)
	_ fs.NodeFlusher   = (*fsNode)(nil)
	_ fs.NodeStatfser  = (*fsNode)(nil)
)

// path is the node's path inside the mount, for triggers.
func (fn *fsNode) path(name string) string {
	p := fn.Path(nil)
	if name == "" {
		return p
	}
	if p == "" {
		return name
	}
	return p + "/" + name
}

func (fn *fsNode) child(ctx context.Context, n *node) *fs.Inode {
	return fn.NewInode(ctx, &fsNode{fs: fn.fs, n: n}, fs.StableAttr{Mode: n.mode & syscall.S_IFMT, Ino: n.ino})
}

func attr(n *node, out *fuse.Attr) {
	out.Ino = n.ino
	out.Mode = n.mode
	out.Size = uint64(len(n.data))
	out.Blocks = (out.Size + 511) / 512
	out.Nlink = 1
	if n.isDir() {
		out.Nlink = 2
	}
	out.SetTimes(&n.mtime, &n.mtime, &n.mtime)
}

func (fn *fsNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	f := fn.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.off {
		return nil, syscall.EIO
	}
	c, ok := fn.n.children[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	attr(c, &out.Attr)
	return fn.child(ctx, c), 0
}

func (fn *fsNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	f := fn.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.off {
		return nil, syscall.EIO
	}
	entries := make([]fuse.DirEntry, 0, len(fn.n.children))
	for name, c := range fn.n.children {
		entries = append(entries, fuse.DirEntry{Name: name, Mode: c.mode, Ino: c.ino})
	}
	slices.SortFunc(entries, func(a, b fuse.DirEntry) int { return strings.Compare(a.Name, b.Name) })
	return fs.NewListDirStream(entries), 0
}

func (fn *fsNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f := fn.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.off {
		return syscall.EIO
	}
	attr(fn.n, &out.Attr)
	return 0
}

func (fn *fsNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f := fn.fs
	size, truncate := in.GetSize()
	kind := "setattr"
	if truncate {
		kind = "truncate"
	}
	if errno := f.begin(Op{Kind: kind, Path: fn.path("")}); errno != 0 {
		return errno
	}
	defer f.mu.Unlock()
	n := fn.n
	if truncate {
		if n.isDir() {
			return syscall.EISDIR
		}
		if int(size) <= len(n.data) {
			n.data = n.data[:size]
		} else {
			n.data = append(n.data, make([]byte, int(size)-len(n.data))...)
		}
		n.dirty = true
		if h, ok := fh.(*handle); ok && h.sync {
			n.sync()
		}
	}
	if mode, ok := in.GetMode(); ok {
		n.mode = n.mode&syscall.S_IFMT | mode&^syscall.S_IFMT
	}
	if mtime, ok := in.GetMTime(); ok {
		n.mtime = mtime
	} else if truncate {
		n.mtime = time.Now()
	}
	attr(n, &out.Attr)
	return 0
}

func (fn *fsNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	f := fn.fs
	if errno := f.begin(Op{Kind: "create", Path: fn.path(name)}); errno != 0 {
		return nil, nil, 0, errno
	}
	defer f.mu.Unlock()
	if c, ok := fn.n.children[name]; ok {
		// O_CREAT without O_EXCL on an existing file: the kernel sends
		// Create only when it did not know the name; open it as it is.
		if flags&syscall.O_EXCL != 0 {
			return nil, nil, 0, syscall.EEXIST
		}
		if flags&syscall.O_TRUNC != 0 {
			c.data, c.dirty = c.data[:0], true
		}
		attr(c, &out.Attr)
		return fn.child(ctx, c), &handle{sync: syncFlags(flags)}, 0, 0
	}
	c := f.newNode(syscall.S_IFREG | mode&0o7777)
	fn.n.children[name] = c
	fn.n.mtime = time.Now()
	attr(c, &out.Attr)
	return fn.child(ctx, c), &handle{sync: syncFlags(flags)}, 0, 0
}

func syncFlags(flags uint32) bool { return flags&syscall.O_DSYNC != 0 } // O_SYNC includes O_DSYNC's bit

func (fn *fsNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	f := fn.fs
	if errno := f.begin(Op{Kind: "mkdir", Path: fn.path(name)}); errno != 0 {
		return nil, errno
	}
	defer f.mu.Unlock()
	if _, ok := fn.n.children[name]; ok {
		return nil, syscall.EEXIST
	}
	c := f.newNode(syscall.S_IFDIR | mode&0o7777)
	fn.n.children[name] = c
	fn.n.mtime = time.Now()
	attr(c, &out.Attr)
	return fn.child(ctx, c), 0
}

func (fn *fsNode) Unlink(ctx context.Context, name string) syscall.Errno {
	return fn.remove("unlink", name)
}

func (fn *fsNode) Rmdir(ctx context.Context, name string) syscall.Errno {
	return fn.remove("rmdir", name)
}

func (fn *fsNode) remove(kind, name string) syscall.Errno {
	f := fn.fs
	if errno := f.begin(Op{Kind: kind, Path: fn.path(name)}); errno != 0 {
		return errno
	}
	defer f.mu.Unlock()
	c, ok := fn.n.children[name]
	switch {
	case !ok:
		return syscall.ENOENT
	case kind == "rmdir" && !c.isDir():
		return syscall.ENOTDIR
	case kind == "unlink" && c.isDir():
		return syscall.EISDIR
	case kind == "rmdir" && len(c.children) > 0:
		return syscall.ENOTEMPTY
	}
	delete(fn.n.children, name)
	fn.n.mtime = time.Now()
	return 0
}

func (fn *fsNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	f := fn.fs
	to, ok := newParent.(*fsNode)
	if !ok {
		return syscall.EXDEV
	}
	if errno := f.begin(Op{Kind: "rename", Path: fn.path(name), To: to.path(newName)}); errno != 0 {
		return errno
	}
	defer f.mu.Unlock()
	if flags&^uint32(renameNoReplace) != 0 {
		return syscall.EINVAL // RENAME_EXCHANGE and the like: not modelled
	}
	c, ok := fn.n.children[name]
	if !ok {
		return syscall.ENOENT
	}
	if old, exists := to.n.children[newName]; exists {
		switch {
		case flags&renameNoReplace != 0:
			return syscall.EEXIST
		case old.isDir() && !c.isDir():
			return syscall.EISDIR
		case !old.isDir() && c.isDir():
			return syscall.ENOTDIR
		case old.isDir() && len(old.children) > 0:
			return syscall.ENOTEMPTY
		}
		if f.opts.Mode == RenameKeepsData && !c.isDir() {
			c.sync() // ext4 writes a file renamed over another before the rename commits
		}
	}
	delete(fn.n.children, name)
	to.n.children[newName] = c
	fn.n.mtime, to.n.mtime = time.Now(), time.Now()
	return 0
}

func (fn *fsNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	f := fn.fs
	if flags&syscall.O_TRUNC != 0 {
		if errno := f.begin(Op{Kind: "truncate", Path: fn.path("")}); errno != 0 {
			return nil, 0, errno
		}
		fn.n.data, fn.n.dirty = fn.n.data[:0], true
		f.mu.Unlock()
	} else {
		f.mu.Lock()
		off := f.off
		f.mu.Unlock()
		if off {
			return nil, 0, syscall.EIO
		}
	}
	// Direct I/O: every read and write reaches the model, so the kernel's
	// page cache never holds bytes the model no longer has.
	return &handle{sync: syncFlags(flags)}, fuse.FOPEN_DIRECT_IO, 0
}

func (fn *fsNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f := fn.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.off {
		return nil, syscall.EIO
	}
	data := fn.n.data
	if off >= int64(len(data)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(data)))
	return fuse.ReadResultData(append([]byte(nil), data[off:end]...)), 0
}

func (fn *fsNode) Write(ctx context.Context, fh fs.FileHandle, buf []byte, off int64) (uint32, syscall.Errno) {
	f := fn.fs
	if errno := f.begin(Op{Kind: "write", Path: fn.path("")}); errno != 0 {
		return 0, errno
	}
	defer f.mu.Unlock()
	n := fn.n
	if end := int(off) + len(buf); end > len(n.data) {
		n.data = append(n.data, make([]byte, end-len(n.data))...)
	}
	copy(n.data[off:], buf)
	n.dirty = true
	n.mtime = time.Now()
	if h, ok := fh.(*handle); ok && h.sync {
		n.sync()
	}
	return uint32(len(buf)), 0
}

func (fn *fsNode) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	f := fn.fs
	if errno := f.begin(Op{Kind: "fsync", Path: fn.path("")}); errno != 0 {
		return errno
	}
	defer f.mu.Unlock()
	fn.n.sync()
	return 0
}

// Flush (close) writes nothing back: closing a file is no sync.
func (fn *fsNode) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno { return 0 }

// Statfs reports a large empty disk: JetStream sizes its store by it.
func (fn *fsNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const blocks = 64 << 20 // 256 GiB of 4 KiB blocks
	out.Bsize, out.Frsize = 4096, 4096
	out.Blocks, out.Bfree, out.Bavail = blocks, blocks, blocks
	out.Files, out.Ffree = 1<<20, 1<<20
	out.NameLen = 255
	return 0
}

// Available reports whether this machine can mount FUSE file systems here:
// /dev/fuse and root (for mount(2)) or fusermount3.
func Available() error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no /dev/fuse: %w", err)
	}
	if os.Geteuid() != 0 {
		return errors.New("not root: mounting needs root (or fusermount3)")
	}
	return nil
}

// renameNoReplace is renameat2's RENAME_NOREPLACE flag.
const renameNoReplace = 1
