package node

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"

	"github.com/netseg/netseg/controller/policy"
)

// TestLabelsNeverSilentlyLost: labels the policy source cannot read are
// never taken as none (unzoned, Allow by default). An endpoint keeps the
// labels it last had for the same pod; one without any is left out of
// the compile (so quarantined) with a warning; both are counted; the
// labels of endpoints no longer registered are forgotten.
func TestLabelsNeverSilentlyLost(t *testing.T) {
	a := testAgent(t, filepath.Join(t.TempDir(), "agent.sock"))
	api := map[string]map[string]string{"shop/checkout": {"app": "checkout"}, "pay/payments": {"app": "payments"}}
	down := false
	enrich := func(ep *policy.Endpoint, uid string) error {
		l, ok := api[ep.Namespace+"/"+ep.Name]
		if down || !ok {
			return errors.New("the API server does not answer")
		}
		ep.Labels = l
		return nil
	}
	eps := func(names ...string) []policy.Endpoint {
		var out []policy.Endpoint
		for _, n := range names {
			ns, name, _ := strings.Cut(n, "/")
			out = append(out, policy.Endpoint{Namespace: ns, Name: name})
		}
		return out
	}
	labelsOf := func(got []policy.Endpoint) map[string]map[string]string {
		out := map[string]map[string]string{}
		for _, e := range got {
			out[e.Namespace+"/"+e.Name] = e.Labels
		}
		return out
	}

	got, left := a.enrich(enrich, eps("shop/checkout", "pay/payments"), []string{"u1", "u2"})
	if diff := cmp.Diff(api, labelsOf(got)); diff != "" || len(left) > 0 {
		t.Fatalf("API up: (-want +got)\n%s, left out %v", diff, left)
	}

	down = true
	got, left = a.enrich(enrich, eps("shop/checkout", "pay/payments", "web/frontend"), []string{"u1", "u3", "u4"})
	want := map[string]map[string]string{"shop/checkout": {"app": "checkout"}}
	if diff := cmp.Diff(want, labelsOf(got)); diff != "" {
		t.Errorf("API down: (-want +got)\n%s", diff)
	}
	if len(left) != 2 || !strings.Contains(left[0], "endpoint pay/payments: labels unknown") || !strings.Contains(left[1], "endpoint web/frontend: labels unknown") {
		t.Errorf("left out %q, want pay/payments (a new pod under the old name) and web/frontend (never read)", left)
	}
	count := func(action string) float64 {
		var m dto.Metric
		if err := a.metrics.Labels.WithLabelValues(action).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetCounter().GetValue()
	}
	if k, q := count("kept"), count("quarantined"); k != 1 || q != 2 {
		t.Errorf("counted kept %v, quarantined %v; want 1 and 2", k, q)
	}

	// checkout leaves the node: its labels are not kept for a later pod.
	got, _ = a.enrich(enrich, eps("pay/payments"), []string{"u3"})
	if len(got) != 0 || len(a.labels) != 0 {
		t.Errorf("after checkout left: compiled %v, known labels %v", got, a.labels)
	}
	down = false
	if got, left = a.enrich(enrich, eps("pay/payments"), []string{"u3"}); len(left) > 0 || got[0].Labels["app"] != "payments" {
		t.Errorf("API up again: %v, left out %v", got, left)
	}
}
