package controlplane_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netseg/netseg/e2e/controlplane"
)

// TestStartStop: the control plane serves, survives an API server restart
// with its data, and stops.
func TestStartStop(t *testing.T) {
	start := time.Now()
	cp := controlplane.Start(t)
	t.Logf("control plane ready in %v", time.Since(start).Round(time.Millisecond))
	c := cp.Client()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kept"}}
	if err := c.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	cp.StopAPIServer()
	start = time.Now()
	if err := cp.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server restarted in %v", time.Since(start).Round(time.Millisecond))
	if err := cp.Client().Get(context.Background(), controlplaneKey("kept"), &corev1.Namespace{}); err != nil {
		t.Fatalf("namespace lost across the restart: %v", err)
	}
	start = time.Now()
	cp.Stop()
	t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
}

func controlplaneKey(name string) client.ObjectKey { return client.ObjectKey{Name: name} }
