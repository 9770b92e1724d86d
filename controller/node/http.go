package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ServeHTTP serves /healthz and /readyz on healthAddr and /metrics on
// metricsAddr (the same server when the addresses are equal; "" disables
// one). It returns once the listeners are open; the servers stop with ctx,
// and the returned wait blocks until they have (a scrape reads the
// kernel's counters: wait before closing the agent).
func (a *Agent) ServeHTTP(ctx context.Context, healthAddr, metricsAddr string) (wait func(), err error) {
	muxes := map[string]*http.ServeMux{}
	mux := func(addr string) *http.ServeMux {
		if m, ok := muxes[addr]; ok {
			return m
		}
		m := http.NewServeMux()
		muxes[addr] = m
		return m
	}
	if healthAddr != "" {
		m := mux(healthAddr)
		m.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if err := a.Healthy(); err != nil {
				http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		m.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			st := a.Status()
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			if st.Ready {
				fmt.Fprintln(w, "ready")
			} else {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, "not ready: "+a.notReadyReason())
			}
			for _, l := range st.Loops {
				fmt.Fprintf(w, "%-22s %-8s %s\n", l.Name, l.State, l.Error)
			}
		})
	}
	if metricsAddr != "" {
		mux(metricsAddr).Handle("/metrics", promhttp.HandlerFor(a.metrics.Registry, promhttp.HandlerOpts{}))
	}
	var stopped sync.WaitGroup
	for addr, m := range muxes {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return stopped.Wait, fmt.Errorf("listen on %s: %w", addr, err)
		}
		srv := &http.Server{Handler: m, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Error("http server", "addr", addr, "err", err)
			}
		}()
		stopped.Add(1)
		go func() {
			defer stopped.Done()
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	return stopped.Wait, nil
}
