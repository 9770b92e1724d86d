// Command podbin is the whole payload of the e2e tests' container image: a
// static binary that serves TCP echo ports or probes one, so a container
// runtime can run netseg's tests with no registry and no shell.
//
//	podbin serve 8443 9090        # echo servers until killed
//	podbin probe 10.88.0.5:8443   # exit 0 if the echo came back within 1s
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: podbin serve PORT... | podbin probe HOST:PORT")
		return 2
	}
	switch args[0] {
	case "serve":
		for _, p := range args[1:] {
			ln, err := net.Listen("tcp", ":"+p)
			if err != nil {
				fmt.Fprintln(os.Stderr, "listen:", err)
				return 1
			}
			go serve(ln)
		}
		select {}
	case "probe":
		c, err := net.DialTimeout("tcp", args[1], time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			return 1
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		msg := []byte("netseg-probe")
		if _, err := c.Write(msg); err != nil {
			fmt.Fprintln(os.Stderr, "probe: send:", err)
			return 1
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
			fmt.Fprintln(os.Stderr, "probe: echo:", err)
			return 1
		}
		fmt.Println("ok")
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown command", args[0])
	return 2
}

func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}
