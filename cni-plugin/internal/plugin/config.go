package plugin

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/netseg/netseg/api/agent"
)

// Failure policies: what ADD does when the agent cannot program the
// interface.
const (
	// FailClosed fails ADD and quarantines the interface's addresses.
	FailClosed = "closed"
	// FailOpen lets ADD succeed, warns and counts the failure.
	FailOpen = "open"
)

// Defaults for the optional keys.
const (
	DefaultTimeout  = 5 * time.Second
	DefaultStateDir = "/run/netseg"
)

// Config is the plugin's network configuration, as the runtime passes it on
// stdin. Unknown keys are ignored.
type Config struct {
	types.PluginConf

	// Socket is the agent's unix socket; default agent.DefaultSocket.
	Socket string `json:"socket,omitempty"`
	// FailurePolicy is "closed" (default) or "open".
	FailurePolicy string `json:"failurePolicy,omitempty"`
	// Timeout bounds each call to the agent, as a Go duration; default 5s.
	Timeout string `json:"timeout,omitempty"`
	// StateDir holds the fail-open counter file; default /run/netseg.
	StateDir string `json:"stateDir,omitempty"`

	// RuntimeConfig carries the "labels" capability.
	RuntimeConfig struct {
		Labels map[string]string `json:"labels,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	timeout time.Duration // Timeout, parsed
}

// prevResultRequired lists the commands that cannot work without the
// previous plugin's result: they need the container interface it made.
var prevResultRequired = map[string]bool{"ADD": true, "CHECK": true}

// parseConfig reads the configuration for command (ADD, DEL, CHECK, GC,
// STATUS): unmarshal, parse the previous result, apply defaults, validate.
// The result is nil when the runtime passed none (only DEL, GC and STATUS
// accept that). Every error is a *types.Error that says what to fix.
func parseConfig(stdin []byte, command string) (*Config, *current.Result, error) {
	conf := &Config{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure,
			"netseg: cannot parse the network configuration: fix the JSON the runtime passes (the .conflist entry)", err.Error())
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, nil, types.NewError(types.ErrDecodingFailure,
			"netseg: cannot parse prevResult: the plugin before netseg in the chain returned a result of another CNI version or shape", err.Error())
	}
	var result *current.Result
	if conf.PrevResult != nil {
		r, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return nil, nil, types.NewError(types.ErrDecodingFailure,
				"netseg: cannot convert prevResult to the current result version", err.Error())
		}
		result = r
	}
	if result == nil && prevResultRequired[command] {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: %s needs prevResult: netseg is a chained plugin; list it after a plugin that creates the container's veth (bridge, ptp) in the .conflist", command), "")
	}
	// "socket": "" is a mistake, not a request for the default: tell it
	// apart from an absent key.
	var raw struct {
		Socket *string `json:"socket"`
	}
	_ = json.Unmarshal(stdin, &raw) // the same bytes parsed above
	if raw.Socket != nil && *raw.Socket == "" {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: socket is empty: remove the key to use %s, or set the path netseg-agent --socket listens on", agent.DefaultSocket), "")
	}
	conf.defaults()
	if err := conf.validate(); err != nil {
		return nil, nil, err
	}
	return conf, result, nil
}

func (c *Config) defaults() {
	if c.Socket == "" {
		c.Socket = agent.DefaultSocket
	}
	if c.FailurePolicy == "" {
		c.FailurePolicy = FailClosed
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.Timeout == "" {
		c.timeout = DefaultTimeout
	}
}

// validate checks the values defaults cannot fix.
func (c *Config) validate() error {
	if !filepath.IsAbs(c.Socket) {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: socket %q must be an absolute path (the runtime runs plugins from any directory), e.g. %s", c.Socket, agent.DefaultSocket), "")
	}
	if !filepath.IsAbs(c.StateDir) {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: stateDir %q must be an absolute path, e.g. %s", c.StateDir, DefaultStateDir), "")
	}
	switch c.FailurePolicy {
	case FailClosed, FailOpen:
	default:
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: unknown failurePolicy %q: set it to %q (fail ADD when the agent cannot program the interface) or %q (let the container start unprotected)", c.FailurePolicy, FailClosed, FailOpen), "")
	}
	if c.Timeout != "" {
		d, err := time.ParseDuration(c.Timeout)
		if err != nil {
			return types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("netseg: timeout %q is not a duration: write it like \"5s\" or \"500ms\"", c.Timeout), err.Error())
		}
		if d <= 0 {
			return types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("netseg: timeout %q must be positive, e.g. \"5s\"", c.Timeout), "")
		}
		c.timeout = d
	}
	return nil
}
