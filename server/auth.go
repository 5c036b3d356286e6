package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/auth"
	"github.com/timerd/timerd/internal/reload"
)

// authorizationKey is the metadata key of a bearer token:
// "authorization: Bearer <token>".
const authorizationKey = "authorization"

// AuthReloadInterval is how often, at most, a request makes the node look
// at the token file's modification time (1s).
const AuthReloadInterval = time.Second

// anyRole is every role: what a method open to every token requires.
const anyRole = auth.RoleSchedule | auth.RoleSubscribe | auth.RoleAdmin | auth.RoleNode

// methodRoles is the role (any of them) each gRPC method requires of a
// token. The shard map and the member list, which the Go client needs to
// route to owners whatever its role, are open to every token; they tell
// the cluster's layout, nothing of any namespace's timers. Health checks
// need no token at all (load balancers and orchestrators probe them). A
// method not listed (reflection, and any added later) needs admin or
// node.
var methodRoles = map[string]auth.Role{
	pb.TimerService_Schedule_FullMethodName:          auth.RoleSchedule,
	pb.TimerService_Reschedule_FullMethodName:        auth.RoleSchedule,
	pb.TimerService_Cancel_FullMethodName:            auth.RoleSchedule,
	pb.TimerService_Get_FullMethodName:               auth.RoleSchedule,
	pb.TimerService_Subscribe_FullMethodName:         auth.RoleSubscribe | auth.RoleNode, // node: a peer's relay
	pb.TimerService_ListDeadLetters_FullMethodName:   auth.RoleAdmin,
	pb.TimerService_ReplayDeadLetters_FullMethodName: auth.RoleAdmin,
	pb.ClusterService_Members_FullMethodName:         anyRole,
	pb.ClusterService_ShardMap_FullMethodName:        anyRole,
}

// unlistedRole is what a method missing from methodRoles requires.
const unlistedRole = auth.RoleAdmin | auth.RoleNode

// openMethod reports whether method needs no token.
func openMethod(method string) bool {
	return strings.HasPrefix(method, "/"+healthpb.Health_ServiceDesc.ServiceName+"/")
}

// authorizer checks the bearer token of every RPC against the token file.
type authorizer struct {
	policy *reload.Value[*auth.Policy]
	log    *slog.Logger
}

func newAuthorizer(path string, log *slog.Logger) (*authorizer, error) {
	if path == "" {
		return nil, nil
	}
	v, err := reload.New(func() (*auth.Policy, error) { return auth.ReadFile(path) }, AuthReloadInterval, log, path)
	if err != nil {
		return nil, err
	}
	return &authorizer{policy: v, log: log}, nil
}

// serverOptions are the interceptors of the token check; none when the
// node runs open.
func (a *authorizer) serverOptions() []grpc.ServerOption {
	if a == nil {
		return nil
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(a.unary), grpc.ChainStreamInterceptor(a.stream)}
}

// principal authenticates the caller of ctx and checks it may call
// method. Errors are UNAUTHENTICATED (no token, or an unknown one) or
// PERMISSION_DENIED (the token lacks the method's role).
func (a *authorizer) principal(ctx context.Context, method string) (*auth.Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(authorizationKey)
	if len(vals) == 0 {
		return nil, status.Errorf(codes.Unauthenticated, "%s: missing; send the metadata %q with a bearer token", authorizationKey, "authorization: Bearer <token>")
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return nil, status.Errorf(codes.Unauthenticated, "%s: must be %q", authorizationKey, "Bearer <token>")
	}
	p, err := a.policy.Get().Authenticate(strings.TrimSpace(token))
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "%s: unknown bearer token", authorizationKey)
	}
	need, ok := methodRoles[method]
	if !ok {
		need = unlistedRole
	}
	if !p.Has(need) {
		return nil, status.Errorf(codes.PermissionDenied, "token %q (roles %v) may not call %s, which needs the role %v", p.Name, p.Roles(), method, need)
	}
	return p, nil
}

// mayUse checks that p may use namespace ns ("" is the default
// namespace). The denial names only the namespace and the token: it says
// nothing of the timers there, so a Get of a foreign id reads the same
// whether or not the id exists.
func mayUse(p *auth.Principal, field, ns string) error {
	ns = namespaceOr(ns)
	if !p.MayUse(ns) {
		return status.Errorf(codes.PermissionDenied, "%s: token %q may not use namespace %q", field, p.Name, ns)
	}
	return nil
}

// namespaced is a request that names one namespace.
type namespaced interface{ GetNamespace() string }

// checkRequest checks every namespace a unary request names: the
// request's, or for a Schedule batch each timer's (a timer that names
// none is in the request's). One foreign namespace denies the whole
// request.
func checkRequest(p *auth.Principal, req any) error {
	if r, ok := req.(*pb.ScheduleRequest); ok && len(r.GetTimers()) > 0 {
		for _, t := range r.GetTimers() {
			field, ns := "timers.namespace", t.GetNamespace()
			if ns == "" {
				field, ns = "namespace", r.GetNamespace()
			}
			if err := mayUse(p, field, ns); err != nil {
				return err
			}
		}
		return nil
	}
	if r, ok := req.(namespaced); ok {
		return mayUse(p, "namespace", r.GetNamespace())
	}
	return nil
}

func (a *authorizer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if openMethod(info.FullMethod) {
		return handler(ctx, req)
	}
	p, err := a.principal(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	if err := checkRequest(p, req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a *authorizer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if openMethod(info.FullMethod) {
		return handler(srv, ss)
	}
	p, err := a.principal(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	// A forwarded stream is a peer's relay: it takes this node's shards
	// only and may give deliveries back unsent, which no caller may.
	if isForwarded(ss.Context()) && !p.Has(auth.RoleNode) {
		return status.Errorf(codes.PermissionDenied, "token %q (roles %v) may not open a node-to-node stream (%s metadata), which needs the role %v", p.Name, p.Roles(), forwardedKey, auth.RoleNode)
	}
	return handler(srv, &authorizedStream{ServerStream: ss, p: p})
}

// authorizedStream checks the namespace of each Subscription that comes
// in on a stream. Acks need no check: a stream acknowledges only the
// deliveries it was sent, which are of its subscription's namespace.
type authorizedStream struct {
	grpc.ServerStream
	p *auth.Principal
}

func (s *authorizedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if r, ok := m.(*pb.SubscribeRequest); ok && r.GetSubscription() != nil {
		return mayUse(s.p, "subscription.namespace", r.GetSubscription().GetNamespace())
	}
	return nil
}

// callerAuthorization returns the metadata that carries the caller's
// credentials on to a peer: its authorization, which the peer checks
// again, as a key and value pair (none when the caller sent none).
func callerAuthorization(ctx context.Context) []string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(authorizationKey); len(v) > 0 {
		return []string{authorizationKey, v[0]}
	}
	return nil
}

// NodeContext returns ctx with the node's own credentials for a call to
// a peer that is made on no caller's behalf (Config.NodeToken, a token of
// the role node in the peers' token file). Requests forwarded for a
// caller carry the caller's token instead (see peers.outgoing).
func (s *Server) NodeContext(ctx context.Context) context.Context {
	if s.cfg.NodeToken == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, authorizationKey, "Bearer "+s.cfg.NodeToken)
}

// warnIfOpen logs a warning when the node serves gRPC without tokens on
// an address other than loopback: anyone who reaches it may read and
// change every namespace's timers.
func (s *Server) warnIfOpen() {
	if s.authz != nil {
		return
	}
	addr, ok := s.grpcLis.Addr().(*net.TCPAddr)
	if ok && addr.IP.IsLoopback() {
		return
	}
	s.log.Warn("gRPC is open to anyone who reaches it: no --auth-file, and it listens beyond loopback", "addr", s.grpcLis.Addr().String())
}

// Reload reads the TLS files, the token file and the namespace limits
// file again now, whether or not they changed (cmd/timerd calls it on
// SIGHUP). What fails to load keeps its previous version, and the error
// says which.
func (s *Server) Reload() error {
	var err error
	if s.tls != nil {
		err = s.tls.reload()
	}
	if s.authz != nil {
		err = errors.Join(err, s.authz.policy.Reload())
	}
	if s.limits.file != nil {
		err = errors.Join(err, s.limits.file.Reload())
	}
	return err
}
