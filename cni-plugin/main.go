package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/netseg/netseg/cni-plugin/internal/plugin"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    plugin.Add,
		Del:    plugin.Del,
		Check:  plugin.Check,
		GC:     plugin.GC,
		Status: plugin.Status,
	}, version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0"), "netseg CNI plugin: registers container interfaces with the netseg agent")
}
