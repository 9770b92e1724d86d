package dataplane

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
)

// The br_netfilter sysctls that make a bridge hand its IPv4 and IPv6
// packets to the inet hooks, where the forward chain decides them. They
// are per network namespace (Linux 5.3 and later).
var brNetfilterSysctls = []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"}

// ErrBrNetfilterOff means traffic between containers on one bridge of the
// node reaches no policy: the bridge guard drops it (fail closed) and
// containers on the bridge cannot talk at all.
var ErrBrNetfilterOff = errors.New("bridged traffic bypasses the forward chain")

// CheckBrNetfilter checks, in the namespace, that bridged IP traffic is
// handed to the inet hooks. Without a bridge in the namespace nothing is
// needed. With fix, a sysctl found off is set on again, and its name is
// returned. The error wraps ErrBrNetfilterOff when bridged traffic still
// bypasses the forward chain (the module is not loaded, or a sysctl is
// off and could not be set).
func (n *Namespace) CheckBrNetfilter(fix bool) (fixed []string, err error) {
	links, err := n.nl.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	bridges := 0
	for _, l := range links {
		if l.Type() == "bridge" {
			bridges++
		}
	}
	if bridges == 0 {
		return nil, nil
	}
	err = n.do(func() error {
		for _, name := range brNetfilterSysctls {
			path := "/proc/sys/net/bridge/" + name
			v, err := os.ReadFile(path)
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("%w: the br_netfilter module is not loaded (modprobe br_netfilter)", ErrBrNetfilterOff)
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", path, err)
			}
			if strings.TrimSpace(string(v)) == "1" {
				continue
			}
			if !fix {
				return fmt.Errorf("%w: net.bridge.%s is %s", ErrBrNetfilterOff, name, strings.TrimSpace(string(v)))
			}
			if err := os.WriteFile(path, []byte("1"), 0); err != nil {
				return fmt.Errorf("%w: net.bridge.%s is %s and could not be set: %v", ErrBrNetfilterOff, name, strings.TrimSpace(string(v)), err)
			}
			fixed = append(fixed, "net.bridge."+name)
		}
		return nil
	})
	return fixed, err
}

// do runs f on a thread inside the namespace: files under /proc/sys/net
// opened there are the namespace's.
func (n *Namespace) do(f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(n.fd); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace: %w", err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace: it stays locked to this
		// goroutine, so nothing else runs on it, and ends with it.
		return errors.Join(ferr, fmt.Errorf("leave network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}

// ConntrackFill reads, in the namespace, how many connections conntrack
// tracks and how many it may (net.netfilter.nf_conntrack_count and
// _max). At the limit the kernel drops every packet that would start a
// new connection, allowed ones too.
func (n *Namespace) ConntrackFill() (count, limit int, err error) {
	err = n.do(func() error {
		for _, v := range []struct {
			name string
			to   *int
		}{{"nf_conntrack_count", &count}, {"nf_conntrack_max", &limit}} {
			b, err := os.ReadFile("/proc/sys/net/netfilter/" + v.name)
			if err != nil {
				return fmt.Errorf("read %s: %w", v.name, err)
			}
			if _, err := fmt.Sscan(string(b), v.to); err != nil {
				return fmt.Errorf("read %s: %q: %w", v.name, b, err)
			}
		}
		return nil
	})
	return count, limit, err
}
