package plugin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/cni-plugin/internal/fakeagent"
)

// These tests run the commands in process against a fake agent; none of
// them reaches the kernel (the kernel tests are in cni-plugin/).

func args(stdin []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "ctr1", Netns: testNetns, IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1", StdinData: stdin}
}

func withSocket(sock, extra string) []byte {
	if extra != "" {
		extra = ", " + extra
	}
	return conf(`"socket": "` + sock + `"` + extra)
}

func TestStatus(t *testing.T) {
	a := fakeagent.Start(t, t.TempDir())
	if err := Status(args(withSocket(a.Socket, ""))); err != nil {
		t.Errorf("STATUS with a ready agent: %v", err)
	}
	a.NotReady(true)
	assertCNIError(t, Status(args(withSocket(a.Socket, ""))), types.ErrPluginNotAvailable, "is not ready yet")
	missing := filepath.Join(t.TempDir(), "none.sock")
	assertCNIError(t, Status(args(withSocket(missing, ""))), types.ErrPluginNotAvailable,
		"agent at "+missing+" not available: agent unavailable: connect to "+missing)
}

func TestTimeout(t *testing.T) {
	a := fakeagent.Start(t, t.TempDir())
	a.Hang(2 * time.Second)
	stdin := withSocket(a.Socket, `"timeout": "100ms", "cni.dev/valid-attachments": []`)
	assertCNIError(t, Status(args(stdin)), types.ErrPluginNotAvailable, "no answer within the timeout of 100ms (raise \"timeout\"")
	assertCNIError(t, GC(args(stdin)), types.ErrTryAgainLater, "unreachable: no answer within the timeout of 100ms")
}

func TestGC(t *testing.T) {
	a := fakeagent.Start(t, t.TempDir())
	stdin := withSocket(a.Socket, `"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2", "ifname": "net1"}]`)
	if err := GC(args(stdin)); err != nil {
		t.Fatalf("GC: %v", err)
	}
	want := []agent.Attachment{{ContainerID: "c1", IfName: "eth0"}, {ContainerID: "c2", IfName: "net1"}}
	if diff := cmp.Diff(want, a.Last(agent.OpGC).Keep); diff != "" {
		t.Errorf("keep (-want +got):\n%s", diff)
	}
	assertCNIError(t, GC(args(withSocket(a.Socket, ""))), types.ErrInvalidNetworkConfig, "GC without cni.dev/valid-attachments")
	a.Stop()
	assertCNIError(t, GC(args(stdin)), types.ErrTryAgainLater, "agent at "+a.Socket+" unreachable")
}

func TestDelIsTolerant(t *testing.T) {
	a := fakeagent.Start(t, t.TempDir())
	noNetns := args(withSocket(a.Socket, ""))
	noNetns.Netns = ""
	for i, ca := range []*skel.CmdArgs{args(withSocket(a.Socket, "")), args(withSocket(a.Socket, "")), noNetns} {
		if err := Del(ca); err != nil {
			t.Errorf("DEL %d: %v", i, err)
		}
	}
	got := a.Last(agent.OpDel).Endpoint
	if got.ContainerID != "ctr1" || got.IfName != "eth0" || got.Namespace != "shop" || got.Name != "web-1" {
		t.Errorf("DEL sent %+v", got)
	}
	a.Stop()
	var te *types.Error
	if err := Del(args(withSocket(a.Socket, ""))); !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, "unreachable") {
		t.Errorf("DEL with the agent down: %v, want code %d (try again later) naming the agent", err, types.ErrTryAgainLater)
	}
}

func TestAddNeedsAVethInPrevResult(t *testing.T) {
	a := fakeagent.Start(t, t.TempDir())
	assertCNIError(t, Add(args(withSocket(a.Socket, ""))), types.ErrInvalidNetworkConfig, "ADD needs prevResult")
	assertCNIError(t, Add(args(withSocket(a.Socket, prevNoVeth))), types.ErrInvalidNetworkConfig, `prevResult has no interface "eth0"`)
	assertCNIError(t, Check(args(withSocket(a.Socket, prevNoVeth))), types.ErrInvalidNetworkConfig, `prevResult has no interface "eth0"`)
	if n := len(a.Requests()); n != 0 {
		t.Errorf("agent got %d requests for invalid ADDs", n)
	}
}

func TestCountFailOpenConcurrently(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, err := countFailOpen(dir); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	b, err := os.ReadFile(filepath.Join(dir, FailOpenFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(b)); got != "20" {
		t.Errorf("counter %q, want 20", got)
	}
}
