package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/netseg/netseg/api/agent"
)

// keepAdopting adopts, every FailOpenInterval, the containers the plugin
// started unsegmented under failurePolicy open while the agent could not
// program them.
func (a *Agent) keepAdopting(ctx context.Context) {
	if a.failOpenDir == "" {
		return
	}
	a.keep(ctx, FailOpenInterval, &a.failOpenErr, "fail-open containers", func() error { return a.adoptFailOpen(ctx) })
}

// adoptFailOpen registers each recorded fail-open container whose
// interface still exists, as its ADD would have, then removes its
// addresses from the fail-open sets (its own rules decide its traffic
// from then on) and its record. A record whose interface is gone is
// closed without registering. It returns an error naming what is still
// unsegmented.
func (a *Agent) adoptFailOpen(ctx context.Context) error {
	entries, err := os.ReadDir(a.failOpenDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read fail-open records: %w", err)
	}
	var pending []string
	var firstErr error
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(a.failOpenDir, e.Name())
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue // DEL closed it meanwhile
		}
		var ep agent.Endpoint
		if err == nil {
			err = json.Unmarshal(b, &ep)
		}
		if err != nil || ep.ContainerID == "" {
			a.log.Error("fail-open record unreadable; removed (its addresses stay open until the container's DEL)", "record", path, "err", err)
			_ = os.Remove(path)
			continue
		}
		addrs := make([]netip.Addr, 0, len(ep.IPs))
		for _, s := range ep.IPs {
			if p, err := netip.ParsePrefix(s); err == nil {
				addrs = append(addrs, p.Addr().Unmap())
			}
		}
		adopted := false
		live := false
		if ep.HostIface != "" {
			var err error
			if live, err = a.kernel.LinkExists(ep.HostIface); err != nil {
				pending = append(pending, EndpointID(ep.Attachment)) // unknown: asked again next time
				firstErr = cmpOr(firstErr, err)
				continue
			}
		}
		if live {
			actx, cancel := context.WithTimeout(ctx, requestTimeout)
			err := a.add(actx, ep, &agent.Response{})
			cancel()
			if err != nil {
				pending = append(pending, EndpointID(ep.Attachment))
				firstErr = cmpOr(firstErr, err)
				continue
			}
			adopted = true
		}
		if err := a.dp.ReleaseFailOpen(addrs); err != nil {
			pending = append(pending, EndpointID(ep.Attachment))
			firstErr = cmpOr(firstErr, err)
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			a.log.Warn("remove fail-open record", "record", path, "err", err)
		}
		if adopted {
			a.remarkAdopted(addrs)
			a.metrics.Adopted.Inc()
			a.log.Info("adopted a container started unsegmented (failurePolicy open): its rules decide its traffic now",
				"endpoint", EndpointID(ep.Attachment), "pod", ep.Namespace+"/"+ep.Name, "ips", ep.IPs)
		}
	}
	if len(pending) > 0 {
		return fmt.Errorf("%d container(s) started unsegmented (failurePolicy open) are not adopted yet (%s): %w",
			len(pending), strings.Join(pending, ", "), firstErr)
	}
	return nil
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
