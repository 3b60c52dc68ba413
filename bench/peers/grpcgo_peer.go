// grpcgo-peer: a benchmark peer serving docker.swarmkit.v1.Dispatcher's Heartbeat and Session
// on grpc-go (Debian's golang-google-grpc-dev), h2c. Heartbeat answers a 5 s period; Session
// sends its first message (session ID, node, manager list) and then one more whenever the
// manager list changes. SIGUSR1 changes the list (adds or removes a second manager).
//
// Set up for a server on one core: GOMAXPROCS from the environment (bench/run.sh sets 1 and
// pins the process) and no per-connection stream cap (many Sessions share a connection); the
// transport's buffers and flow-control windows keep grpc-go's defaults.
//
//	grpcgo-peer [-listen HOST:PORT]
//
// Prints "grpcgo-peer listening on HOST:PORT" on stderr once it serves.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"math"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"

	pb "dispatchpeer/swarmpb"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
)

// managers holds the current manager list; changed is closed (and replaced) at every change,
// which wakes every Session waiting on it.
type managers struct {
	mu      sync.Mutex
	version uint
	changed chan struct{}
	addr    string
}

func (m *managers) current() (uint, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version, m.changed
}

func (m *managers) toggle() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.version++
	close(m.changed)
	m.changed = make(chan struct{})
}

func (m *managers) list(version uint) []*pb.WeightedPeer {
	l := []*pb.WeightedPeer{{Peer: &pb.Peer{NodeId: "manager-1", Addr: m.addr}, Weight: 10}}
	if version%2 == 1 {
		l = append(l, &pb.WeightedPeer{Peer: &pb.Peer{NodeId: "manager-fanout", Addr: m.addr}, Weight: 10})
	}
	return l
}

type dispatcher struct {
	pb.UnimplementedDispatcherServer
	m *managers
}

func (d *dispatcher) Heartbeat(context.Context, *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	return &pb.HeartbeatResponse{Period: durationpb.New(5e9)}, nil
}

func newSessionID() string {
	const alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
	b := make([]byte, 25)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func (d *dispatcher) Session(_ *pb.SessionRequest, stream pb.Dispatcher_SessionServer) error {
	nodeID := "peer-node"
	if md, ok := metadata.FromIncomingContext(stream.Context()); ok {
		if v := md.Get("node-id"); len(v) > 0 {
			nodeID = v[0]
		}
	}
	id := newSessionID()
	version, changed := d.m.current()
	first := &pb.SessionMessage{SessionId: id, Node: &pb.Node{Id: nodeID}, Managers: d.m.list(version)}
	if err := stream.Send(first); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-changed:
			version, changed = d.m.current()
			if err := stream.Send(&pb.SessionMessage{SessionId: id, Managers: d.m.list(version)}); err != nil {
				return err
			}
		}
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:4302", "address to serve h2c on")
	flag.Parse()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "grpcgo-peer:", err)
		os.Exit(1)
	}
	m := &managers{changed: make(chan struct{}), addr: lis.Addr().String()}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGUSR1)
	go func() {
		for range sigs {
			m.toggle()
		}
	}()
	s := grpc.NewServer(grpc.MaxConcurrentStreams(math.MaxUint32))
	pb.RegisterDispatcherServer(s, &dispatcher{m: m})
	fmt.Fprintf(os.Stderr, "grpcgo-peer listening on %s\n", lis.Addr())
	if err := s.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "grpcgo-peer:", err)
		os.Exit(1)
	}
}
