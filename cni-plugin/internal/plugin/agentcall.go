package plugin

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/netseg/netseg/api/agent"
)

// callAgent sends req to the configured socket within the configured
// timeout.
func callAgent(conf *Config, req agent.Request) (*agent.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout)
	defer cancel()
	resp, err := agent.Call(ctx, conf.Socket, req)
	// The connection's deadline is the context's: an unavailable agent at
	// or past it ran out of time (the context's own timer may not have
	// fired yet, so ctx.Err() cannot tell).
	if dl, _ := ctx.Deadline(); errors.Is(err, agent.ErrUnavailable) && !time.Now().Before(dl) {
		// err already wraps agent.ErrUnavailable.
		return resp, fmt.Errorf("no answer within the timeout of %s (raise \"timeout\" or check the agent's load): %w", conf.timeout, err)
	}
	return resp, err
}

// agentError turns a failed call into a CNI error that names the socket
// and the cause: ErrTryAgainLater when the agent could not be reached (the
// runtime retries), ErrInternal when it answered an error.
func agentError(conf *Config, what string, err error) *types.Error {
	if errors.Is(err, agent.ErrUnavailable) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("netseg: %s: agent at %s unreachable: %v: start netseg-agent, or point \"socket\" at the path it listens on", what, conf.Socket, err), "")
	}
	return types.NewError(types.ErrInternal,
		fmt.Sprintf("netseg: %s: agent at %s answered: %v", what, conf.Socket, err), "")
}

// cniError keeps a *types.Error as it is and wraps anything else as an
// internal error with context.
func cniError(what string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("netseg: %s: %v", what, err), "")
}
