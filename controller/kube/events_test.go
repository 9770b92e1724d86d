package kube

import (
	"fmt"
	"testing"
	"time"
)

// TestAlertEventCaps: a pod gets at most podEventCap alert Events per
// eventInterval, the agent at most eventBurst at once and eventRate a
// second after; what the caps hold back is counted; old marks are pruned.
func TestAlertEventCaps(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	w := newStatusWriter(&Source{}, nil, nil)
	sent := 0
	for range 50 { // a scanning pod
		if w.allowAlertEvent("Pod/tenant/scanner", t0) {
			sent++
		}
	}
	if sent != podEventCap || w.suppressed["pod"] != 50-podEventCap {
		t.Errorf("one pod: %d sent, %d held back by its cap; want %d and %d", sent, w.suppressed["pod"], podEventCap, 50-podEventCap)
	}
	sent = 0
	for i := range 100 { // 100 pods at once: the agent's burst
		if w.allowAlertEvent(fmt.Sprintf("Pod/tenant/p%d", i), t0) {
			sent++
		}
	}
	if want := eventBurst - podEventCap; sent != want || w.suppressed["agent"] != uint64(100-want) {
		t.Errorf("100 pods: %d sent, %d held back by the agent's rate; want %d and %d", sent, w.suppressed["agent"], want, 100-want)
	}
	if !w.allowAlertEvent("Pod/tenant/late", t0.Add(time.Second)) {
		t.Errorf("a second later the agent's rate lets one more through")
	}
	// After the interval the scanner may send again, and the marks of the
	// first interval are forgotten.
	w.lastEvents["old"] = eventMark{msg: "m", at: t0}
	later := t0.Add(eventInterval + time.Minute)
	if !w.allowAlertEvent("Pod/tenant/scanner", later) {
		t.Errorf("the scanner's cap did not renew after %v", eventInterval)
	}
	if _, ok := w.lastEvents["old"]; ok || len(w.podEvents) != 1 {
		t.Errorf("after the interval: %d event marks, %d pod counts; want the old ones pruned", len(w.lastEvents), len(w.podEvents))
	}
}
