// Command opa-extauthz is the ext_authz baseline that scripts/setup can build:
// Envoy's Authorization service answered by OPA's Go SDK evaluating a query
// over bundles, in one process, the way opa-envoy-plugin does it.
//
// The Go module proxy refuses github.com/open-policy-agent/opa-envoy-plugin, so
// bench.run cannot build the plugin on a fresh machine. This program does the
// same work per Check, with the same OPA version AAM runs:
//
//   - the CheckRequest is rendered as proto3 JSON and decoded into OPA's input
//     (numbers kept exact), with parsed_path, parsed_query and, for a JSON
//     body, parsed_body added;
//   - one prepared query is evaluated against the in-memory store;
//   - a boolean result, or an object with "allowed", becomes OK or 403.
//
// Decision logging, metrics endpoints and bundle polling are left out: the
// plugin's benchmark configuration turns decision logs off and serves fixed
// bundles too.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"strings"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
)

type bundles []string

func (b *bundles) String() string     { return strings.Join(*b, ",") }
func (b *bundles) Set(v string) error { *b = append(*b, v); return nil }

func main() {
	addr := flag.String("addr", "127.0.0.1:9191", "gRPC listen address")
	query := flag.String("query", "data.envoy.authz.allow", "the query whose result decides")
	var paths bundles
	flag.Var(&paths, "bundle", "bundle directory or .tar.gz (repeatable; roots must not overlap)")
	flag.Parse()
	if len(paths) == 0 {
		fmt.Fprintln(os.Stderr, "opa-extauthz: error: at least one -bundle is required")
		os.Exit(2)
	}
	opts := []func(*rego.Rego){rego.Query(*query)}
	for _, p := range paths {
		opts = append(opts, rego.LoadBundle(p))
	}
	pq, err := rego.New(opts...).PrepareForEval(context.Background())
	if err != nil {
		fmt.Fprintf(os.Stderr, "opa-extauthz: error: %v\n", err)
		os.Exit(1)
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "opa-extauthz: error: %v\n", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	authv3.RegisterAuthorizationServer(srv, &server{query: pq})
	log.Printf("opa-extauthz: serving %s on %s", *query, lis.Addr())
	if err := srv.Serve(lis); err != nil {
		log.Fatal(err)
	}
}

type server struct {
	authv3.UnimplementedAuthorizationServer
	query rego.PreparedEvalQuery
}

func (s *server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	input, err := toInput(req)
	if err != nil {
		return nil, err
	}
	value, err := ast.InterfaceToValue(input)
	if err != nil {
		return nil, err
	}
	rs, err := s.query.Eval(ctx, rego.EvalParsedInput(value))
	if err != nil {
		return nil, err
	}
	if allowed(rs) {
		return &authv3.CheckResponse{
			Status:       &status.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
		}, nil
	}
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(code.Code_PERMISSION_DENIED)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
		}},
	}, nil
}

// allowed reads a boolean result, or an object's "allowed" field; anything else denies.
func allowed(rs rego.ResultSet) bool {
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return false
	}
	switch v := rs[0].Expressions[0].Value.(type) {
	case bool:
		return v
	case map[string]any:
		b, ok := v["allowed"].(bool)
		return ok && b
	}
	return false
}

// toInput renders the request the way OPA policies for Envoy read it.
func toInput(req *authv3.CheckRequest) (map[string]any, error) {
	raw, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	var input map[string]any
	if err := util.UnmarshalJSON(raw, &input); err != nil {
		return nil, err
	}
	http := req.GetAttributes().GetRequest().GetHttp()
	path, query, _ := strings.Cut(http.GetPath(), "?")
	segments := []any{}
	for _, seg := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		if s, err := url.PathUnescape(seg); err == nil {
			segments = append(segments, s)
		} else {
			segments = append(segments, seg)
		}
	}
	input["parsed_path"] = segments
	parsedQuery := map[string]any{}
	if values, err := url.ParseQuery(query); err == nil {
		for k, vs := range values {
			list := make([]any, len(vs))
			for i, v := range vs {
				list[i] = v
			}
			parsedQuery[k] = list
		}
	}
	input["parsed_query"] = parsedQuery
	body := http.GetBody()
	if strings.HasPrefix(http.GetHeaders()["content-type"], "application/json") && body != "" {
		var parsed any
		if err := util.NewJSONDecoder(bytes.NewBufferString(body)).Decode(&parsed); err == nil {
			input["parsed_body"] = parsed
		}
	}
	return input, nil
}
