package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/netseg/netseg/dataplane"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
)

// NFLOG protocol constants (include/uapi/linux/netfilter/nfnetlink_log.h).
const (
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1

	nfulaCfgCmd   = 1
	nfulaCfgMode  = 2
	nfulaCfgFlags = 6

	nfulnlCfgCmdBind    = 1
	nfulnlCopyPacket    = 2
	nfulnlCfgFConntrack = 0x0004

	nfulaMark      = 2
	nfulaTimestamp = 3
	nfulaPayload   = 9
	nfulaPrefix    = 10
	nfulaCt        = 18
)

// NFLOGConfig configures an NFLOG reader.
type NFLOGConfig struct {
	// Group is the NFLOG group the table logs to (dataplane.Config.NFLOGGroup).
	Group uint16
	// CopyRange is how many bytes of each packet the kernel copies:
	// enough for the IP and L4 headers. Default 128.
	CopyRange uint32
	// ReadBuffer is the socket receive buffer in bytes. Default 32 MiB.
	ReadBuffer int
	// BatchWait: as ConntrackConfig.BatchWait. Default 200 ms.
	BatchWait time.Duration
}

func (c NFLOGConfig) defaults() NFLOGConfig {
	if c.Group == 0 {
		c.Group = 100
	}
	if c.CopyRange == 0 {
		c.CopyRange = 128
	}
	if c.ReadBuffer == 0 {
		c.ReadBuffer = 32 << 20
	}
	if c.BatchWait == 0 {
		c.BatchWait = 200 * time.Millisecond
	}
	return c
}

// NFLOG reads one NFLOG group inside a network namespace.
type NFLOG struct {
	cfg    NFLOGConfig
	conn   *netlink.Conn // while binding
	sock   *eventSocket  // then
	withCt bool

	messages, overflows, errs atomic.Uint64
}

// OpenNFLOG binds the group in the namespace whose file descriptor is
// nsFd (dataplane.Namespace.Fd). It asks for packet copies with the
// conntrack entry attached; kernels built without
// CONFIG_NETFILTER_NETLINK_GLUE_CT refuse that (EOPNOTSUPP), and the
// reader then takes the decision from the packet mark.
func OpenNFLOG(nsFd int, cfg NFLOGConfig) (*NFLOG, error) {
	cfg = cfg.defaults()
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFd})
	if err != nil {
		return nil, fmt.Errorf("nflog group %d: dial netlink: %w", cfg.Group, err)
	}
	r := &NFLOG{cfg: cfg, conn: conn}
	if err := r.bind(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("nflog group %d: %w", cfg.Group, err)
	}
	// Read in batches on a blocking thread, like the conntrack reader: a
	// flood of denied packets then wakes the agent once per batch.
	if r.sock, err = detachEventSocket(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("nflog group %d: %w", cfg.Group, err)
	}
	r.conn = nil
	if err := r.sock.setReadBuffer(cfg.ReadBuffer); err != nil {
		r.sock.Close()
		return nil, fmt.Errorf("nflog group %d: %w", cfg.Group, err)
	}
	return r, nil
}

func (r *NFLOG) config(attrs ...netfilter.Attribute) error {
	msg, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysULOG, MessageType: nfulnlMsgConfig,
		Family: netfilter.ProtoUnspec, ResourceID: r.cfg.Group,
		Flags: netlink.Request | netlink.Acknowledge,
	}, attrs)
	if err != nil {
		return err
	}
	_, err = r.conn.Execute(msg)
	return err
}

func (r *NFLOG) bind() error {
	if err := r.config(netfilter.Attribute{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}); err != nil {
		return fmt.Errorf("bind (is another reader bound to it?): %w", err)
	}
	mode := binary.BigEndian.AppendUint32(nil, r.cfg.CopyRange)
	mode = append(mode, nfulnlCopyPacket, 0)
	if err := r.config(netfilter.Attribute{Type: nfulaCfgMode, Data: mode}); err != nil {
		return fmt.Errorf("set copy mode: %w", err)
	}
	err := r.config(netfilter.Attribute{Type: nfulaCfgFlags, Data: binary.BigEndian.AppendUint16(nil, nfulnlCfgFConntrack)})
	switch {
	case err == nil:
		r.withCt = true
	case errors.Is(err, unix.EOPNOTSUPP):
		// No conntrack glue in this kernel: the mark comes from the packet.
	default:
		return fmt.Errorf("set flags: %w", err)
	}
	return nil
}

// ConntrackAttached reports whether the kernel attaches conntrack entries
// to the messages (else the decision is read from the packet mark).
func (r *NFLOG) ConntrackAttached() bool { return r.withCt }

// Run reads messages and calls handle with each batch of decoded packets
// (see NFLOGConfig.BatchWait), on the calling goroutine, until Close; the
// slice is reused after handle returns. After an overflow it counts it
// and keeps reading. It returns nil after Close, or the first other
// receive error.
func (r *NFLOG) Run(handle func([]Packet)) error {
	packetType := uint16(netfilter.NFSubsysULOG)<<8 | nfulnlMsgPacket
	// One slot: the kernel packs several messages per datagram.
	err := readBatches(r.sock, make([]byte, 1<<20), 0, r.cfg.BatchWait,
		func(b []byte, batch []Packet) []Packet {
			now := time.Now()
			err := eachMessage(b, func(msg []byte) {
				if binary.NativeEndian.Uint16(msg[4:6]) != packetType {
					return
				}
				if p, err := decodeNFLOG(msg[nlmsgHdrLen:], now); err != nil {
					r.errs.Add(1)
				} else {
					r.messages.Add(1)
					batch = append(batch, p)
				}
			})
			if err != nil {
				r.errs.Add(1)
			}
			return batch
		}, handle, &r.overflows)
	if err != nil {
		return fmt.Errorf("nflog group %d: %w", r.cfg.Group, err)
	}
	return nil
}

// decodeNFLOG decodes an NFULNL_MSG_PACKET body (after the netlink header).
func decodeNFLOG(data []byte, now time.Time) (Packet, error) {
	p := Packet{Time: now}
	if len(data) < 4 {
		return p, errShort
	}
	ad, err := netfilter.NewAttributeDecoder(data[4:])
	if err != nil {
		return p, err
	}
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			p.Prefix = ad.String()
		case nfulaMark:
			if !p.MarkFromCt {
				p.Mark = dataplane.Mark(ad.Uint32())
			}
		case nfulaTimestamp:
			b := ad.Bytes()
			if len(b) == 16 {
				sec, usec := binary.BigEndian.Uint64(b[0:8]), binary.BigEndian.Uint64(b[8:16])
				p.Time = time.Unix(int64(sec), int64(usec)*1000)
			}
		case nfulaPayload:
			payload = ad.Bytes()
		case nfulaCt:
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					if nad.Type() == ctaMark {
						p.Mark, p.MarkFromCt = dataplane.Mark(nad.Uint32()), true
					}
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return p, err
	}
	if err := decodeIP(payload, &p); err != nil {
		return p, err
	}
	return p, nil
}

// Stats returns the reader's counters.
func (r *NFLOG) Stats() Stats {
	return Stats{Messages: r.messages.Load(), Overflows: r.overflows.Load(), Errors: r.errs.Load()}
}

// Close ends Run, whose end closes the socket, which releases the group
// (the kernel destroys the instances of a released netlink port).
func (r *NFLOG) Close() error {
	r.sock.Close()
	return nil
}
