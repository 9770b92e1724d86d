package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

func main() {
	notYet := func(*skel.CmdArgs) error {
		return types.NewError(types.ErrInternal, "netseg plugin is not available in this version yet", "")
	}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: notYet, Del: notYet, Check: notYet},
		version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0"), "netseg CNI plugin")
}
