package server

import (
	"fmt"
	"net/http"
	"net/http/pprof"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpHandler serves /metrics, /healthz (the process is up and not
// shutting down) and /readyz (every shard is loaded and served), and with
// Config.PProf Go's profiles under /debug/pprof/.
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	if s.cfg.PProf {
		// Index also serves the named profiles: /debug/pprof/goroutine,
		// heap, allocs, block, mutex, threadcreate.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorLog: nil}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if s.quitting() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		total, loaded := s.node.Counts()
		if !s.Ready() {
			http.Error(w, fmt.Sprintf("not ready: %d of %d shards loaded", loaded, total), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ready: %d of %d shards loaded\n", loaded, total)
	})
	return mux
}
