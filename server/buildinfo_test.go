package server

import (
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
)

// TestBuildInfoMetric: /metrics says what the node was built from.
func TestBuildInfoMetric(t *testing.T) {
	for _, tc := range []struct {
		name              string
		version, revision string
		want              string
	}{
		{"set", "v1.2.3", "abc123+modified", `timerd_build_info{commit="abc123+modified",goversion="` + runtime.Version() + `",version="v1.2.3"} 1`},
		{"unset", "", "", `timerd_build_info{commit="unknown",goversion="` + runtime.Version() + `",version="devel"} 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "", func(c *Config) { c.Version, c.Revision = tc.version, tc.revision })
			resp, err := http.Get("http://" + e.srv.HTTPAddr() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(body), tc.want) {
				t.Errorf("/metrics lacks %s", tc.want)
			}
		})
	}
}
