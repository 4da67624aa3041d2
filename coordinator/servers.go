package coordinator

import (
	"github.com/vbatch/vbatch/internal/httpsafe"
	"math"
	"net"
	"net/http"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vbatch/vbatch/coordinator/api"
	"github.com/vbatch/vbatch/internal/tlsutil"
	"github.com/vbatch/vbatch/monitoring"
	"github.com/vbatch/vbatch/rpc/gen/vbatch/v1/vbatchv1connect"
)

// startServers starts the HTTP API server and the RPC server.
func (c *Coordinator) startServers() {
	a := api.New(c, api.Config{
		RootKey:        c.cfg.RootKey,
		NoAuth:         c.cfg.RootKey == "",
		MaxUploadBytes: c.cfg.MaxUploadBytes,
		Validate:       c.cfg.validateOpts(),
		Limits:         c.cfg.limits(),
		Audit:          c.audit,
		Models:         c.router.Models,
		Inference:      c.router.ServeInference,
	}, c.log.With("logger", "api"))
	mux := http.NewServeMux()
	c.registerCollectors()
	mux.Handle("/metrics", promhttp.HandlerFor(c.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/", monitoring.InstrumentHTTP(monitoring.SentryHTTP(a.Handler()), c.metrics.HTTP))
	c.httpSrv = httpsafe.NewServer(mux, httpsafe.DefaultTimeouts)

	rpc := http.NewServeMux()
	// RPC runs between hosts of one LAN, where compressing responses
	// costs more CPU than it saves time: answers are never compressed
	// (compressed requests are still understood).
	opts := connect.WithHandlerOptions(
		connect.WithInterceptors(monitoring.SentryInterceptor()),
		connect.WithCompressMinBytes(math.MaxInt),
	)
	path, h := vbatchv1connect.NewClusterServiceHandler(&clusterService{c: c}, opts)
	rpc.Handle(path, h)
	path, h = vbatchv1connect.NewAgentServiceHandler(c.agents, opts)
	rpc.Handle(path, h)
	rpc.Handle("/blobs/", c.blobs.Handler())
	c.rpcSrv = httpsafe.NewServer(c.rpcAuth(rpc), httpsafe.DefaultTimeouts)
	if c.tls != nil {
		// The API authenticates with keys, so client certificates are
		// optional there; RPC needs one from every caller.
		c.httpSrv.TLSConfig = c.tls.ServerConfig(false)
		c.rpcSrv.TLSConfig = c.tls.ServerConfig(true, tlsutil.RoleServer, tlsutil.RoleAgent)
	}
	c.serve(c.httpSrv, c.httpLn)
	c.serve(c.rpcSrv, c.rpcLn)
}

// serve runs srv on ln, over TLS when srv has a TLSConfig.
func (c *Coordinator) serve(srv *http.Server, ln net.Listener) {
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := httpsafe.Serve(srv, ln); err != nil {
			c.log.Error("server stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
}
