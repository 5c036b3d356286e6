// Package timerdv1 is the generated Go code for the timerd.v1 gRPC contract
// (api/timerd/v1/timerd.proto): the TimerService and ClusterService clients
// and servers and their messages. The generated files must not be edited by
// hand; change the .proto file and run make proto.
package timerdv1
