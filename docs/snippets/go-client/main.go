// A QSC CortexService client in Go: lists assessments page by page, shows how a refusal's
// ErrorInfo reads, and follows SubscribeAssessments until its snapshot is complete.
//
//	go-client CORTEX_ADDR CA_FILE CERT_FILE KEY_FILE FILTER
//
// Built with Debian 12's Go 1.19 and packaged gRPC (see build-go-client.sh); the code generated
// from proto/ is imported as example.com/soar/gen/qsc/...
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	cortexv1 "example.com/soar/gen/qsc/cortex/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func dial(addr, caFile, certFile, keyFile string) (*grpc.ClientConn, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile) // the `soar` certificate and key
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("no CA certificate in " + caFile)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		MinVersion:   tls.VersionTLS13, // the Cortex refuses anything older
	})
	return grpc.Dial(addr, grpc.WithTransportCredentials(creds))
}

// errorReason is the stable reason a QSC refusal carries (INVALID_FILTER, ...), or "".
func errorReason(err error) (string, map[string]string) {
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.Domain == "cortex.qsc" {
			return info.Reason, info.Metadata
		}
	}
	return "", nil
}

func main() {
	if len(os.Args) != 6 {
		log.Fatal("usage: go-client CORTEX_ADDR CA_FILE CERT_FILE KEY_FILE FILTER")
	}
	conn, err := dial(os.Args[1], os.Args[2], os.Args[3], os.Args[4])
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	api := cortexv1.NewCortexServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Every page with the same filter and order; the token of one page asks for the next.
	req := &cortexv1.ListAssessmentsRequest{Filter: os.Args[5], OrderBy: "create_time", PageSize: 50}
	for {
		var trailer metadata.MD
		resp, err := api.ListAssessments(ctx, req, grpc.Trailer(&trailer))
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("page: %d of %d, key exchange %v\n",
			len(resp.Assessments), resp.TotalSize, trailer.Get("qsc-kex-group"))
		for _, a := range resp.Assessments {
			fmt.Printf("assessment %s revision %d %s confidence %.2f %s\n",
				a.Name, a.Revision, a.State, a.Confidence, a.Title)
		}
		if resp.NextPageToken == "" {
			break
		}
		req.PageToken = resp.NextPageToken
	}

	// A refusal: the code, and the reason to branch on.
	_, err = api.ListAssessments(ctx, &cortexv1.ListAssessmentsRequest{Filter: "confidence >>= 1"})
	reason, meta := errorReason(err)
	fmt.Printf("refused: %s %s position %s\n", status.Code(err), reason, meta["position"])

	// The snapshot of what matches, then live changes; stop at the end of the snapshot.
	stream, err := api.SubscribeAssessments(ctx, &cortexv1.SubscribeAssessmentsRequest{
		Filter: os.Args[5], IncludeExisting: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		} else if err != nil {
			log.Fatal(err)
		}
		if change := msg.GetChange(); change != nil {
			fmt.Printf("change %s %s revision %d\n",
				change.Type, change.Assessment.Name, change.Assessment.Revision)
		} else if p := msg.GetProgress(); p != nil && p.SnapshotComplete {
			fmt.Printf("snapshot complete, resume token %s\n", p.ResumeToken)
			break
		}
	}
}
