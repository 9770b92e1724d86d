package plugin

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"

	"github.com/netseg/netseg/api/agent"
)

// Test conventions: a bridge prevResult for container eth0 in /var/run/netns/c.
const (
	testNetns = "/var/run/netns/c"
	prevOK    = `"prevResult": {"cniVersion": "1.0.0",
		"interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/var/run/netns/c"}],
		"ips": [{"address": "10.88.0.5/24", "interface": 2}, {"address": "fd00:88::5/64", "interface": 2}]}`
	prevNoVeth = `"prevResult": {"cniVersion": "1.0.0",
		"interfaces": [{"name": "br0"}],
		"ips": [{"address": "10.88.0.5/24", "interface": 0}]}`
)

func conf(extra string) []byte {
	s := `{"cniVersion": "1.0.0", "name": "n", "type": "netseg"`
	if extra != "" {
		s += ", " + extra
	}
	return []byte(s + "}")
}

func TestParseConfig(t *testing.T) {
	type want struct {
		Socket, FailurePolicy, StateDir string
		Timeout                         time.Duration
		Labels                          map[string]string
		IPs                             []string
	}
	tests := []struct {
		name    string
		stdin   []byte
		command string
		want    want
		wantErr string // substring of the CNI error's message: what to fix
		code    uint
	}{
		{name: "defaults", stdin: conf(prevOK), command: "ADD",
			want: want{Socket: agent.DefaultSocket, FailurePolicy: "closed", StateDir: "/run/netseg", Timeout: 5 * time.Second,
				IPs: []string{"10.88.0.5/24", "fd00:88::5/64"}}},
		{name: "all keys, unknown ignored", command: "ADD",
			stdin: conf(`"socket": "/tmp/a.sock", "failurePolicy": "open", "timeout": "250ms", "stateDir": "/tmp/st",
				"whatever": 1, "runtimeConfig": {"labels": {"app": "web"}}, ` + prevOK),
			want: want{Socket: "/tmp/a.sock", FailurePolicy: "open", StateDir: "/tmp/st", Timeout: 250 * time.Millisecond,
				Labels: map[string]string{"app": "web"}, IPs: []string{"10.88.0.5/24", "fd00:88::5/64"}}},
		{name: "DEL without prevResult", stdin: conf(""), command: "DEL",
			want: want{Socket: agent.DefaultSocket, FailurePolicy: "closed", StateDir: "/run/netseg", Timeout: 5 * time.Second}},
		{name: "malformed JSON", stdin: []byte(`{"type": "netseg",`), command: "ADD",
			wantErr: "fix the JSON", code: types.ErrDecodingFailure},
		{name: "ADD without prevResult", stdin: conf(""), command: "ADD",
			wantErr: "list it after a plugin that creates the container's veth", code: types.ErrInvalidNetworkConfig},
		{name: "CHECK without prevResult", stdin: conf(""), command: "CHECK",
			wantErr: "CHECK needs prevResult", code: types.ErrInvalidNetworkConfig},
		{name: "prevResult of wrong shape", stdin: conf(`"prevResult": {"ips": "nope"}`), command: "ADD",
			wantErr: "cannot parse prevResult", code: types.ErrDecodingFailure},
		{name: "unknown failurePolicy", stdin: conf(`"failurePolicy": "maybe", ` + prevOK), command: "ADD",
			wantErr: `unknown failurePolicy "maybe": set it to "closed"`, code: types.ErrInvalidNetworkConfig},
		{name: "unparsable timeout", stdin: conf(`"timeout": "5 seconds", ` + prevOK), command: "ADD",
			wantErr: `timeout "5 seconds" is not a duration: write it like "5s"`, code: types.ErrInvalidNetworkConfig},
		{name: "zero timeout", stdin: conf(`"timeout": "0s", ` + prevOK), command: "ADD",
			wantErr: `timeout "0s" must be positive`, code: types.ErrInvalidNetworkConfig},
		{name: "negative timeout", stdin: conf(`"timeout": "-1s"`), command: "DEL",
			wantErr: `must be positive`, code: types.ErrInvalidNetworkConfig},
		{name: "empty socket", stdin: conf(`"socket": "", ` + prevOK), command: "ADD",
			wantErr: "socket is empty: remove the key to use /run/netseg/agent.sock", code: types.ErrInvalidNetworkConfig},
		{name: "relative socket", stdin: conf(`"socket": "agent.sock"`), command: "STATUS",
			wantErr: "must be an absolute path", code: types.ErrInvalidNetworkConfig},
		{name: "relative stateDir", stdin: conf(`"stateDir": "run"`), command: "DEL",
			wantErr: `stateDir "run" must be an absolute path`, code: types.ErrInvalidNetworkConfig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, result, err := parseConfig(tt.stdin, tt.command)
			if tt.wantErr != "" {
				assertCNIError(t, err, tt.code, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			got := want{Socket: c.Socket, FailurePolicy: c.FailurePolicy, StateDir: c.StateDir, Timeout: c.timeout,
				Labels: c.RuntimeConfig.Labels}
			if result != nil {
				_, got.IPs, err = containerIface(result, testNetns, "eth0")
				if err != nil {
					t.Fatalf("containerIface: %v", err)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestContainerIface(t *testing.T) {
	tests := []struct {
		name, prev, netns, wantName, wantErr string
		wantIPs                              []string
	}{
		{name: "by sandbox and name", prev: prevOK, netns: testNetns, wantName: "eth0", wantIPs: []string{"10.88.0.5/24", "fd00:88::5/64"}},
		{name: "by name when the sandbox differs", prev: prevOK, netns: "/proc/1/ns/net", wantName: "eth0", wantIPs: []string{"10.88.0.5/24", "fd00:88::5/64"}},
		{name: "addresses without interface index", netns: testNetns, wantName: "eth0", wantIPs: []string{"10.89.0.7/32"},
			prev: `"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/c"}], "ips": [{"address": "10.89.0.7/32"}]}`},
		{name: "no veth in prevResult", prev: prevNoVeth, netns: testNetns,
			wantErr: `prevResult has no interface "eth0" in netns /var/run/netns/c: chain netseg after a plugin that creates the container's veth`},
		{name: "no address", netns: testNetns,
			prev:    `"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/c"}]}`,
			wantErr: `prevResult assigns no address to "eth0": give the main plugin an IPAM section`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, result, err := parseConfig(conf(tt.prev), "ADD")
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			iface, ips, err := containerIface(result, tt.netns, "eth0")
			if tt.wantErr != "" {
				assertCNIError(t, err, types.ErrInvalidNetworkConfig, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if iface.Name != tt.wantName {
				t.Errorf("interface %q, want %q", iface.Name, tt.wantName)
			}
			if diff := cmp.Diff(tt.wantIPs, ips); diff != "" {
				t.Errorf("IPs (-want +got):\n%s", diff)
			}
		})
	}
}

func assertCNIError(t *testing.T, err error, code uint, msg string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T), want a *types.Error", err, err)
	}
	if te.Code != code {
		t.Errorf("code %d, want %d (%v)", te.Code, code, te)
	}
	if !strings.Contains(te.Msg, msg) {
		t.Errorf("message %q does not say %q", te.Msg, msg)
	}
}
