// Linked into every test binary that uses the grpc++ client: the binary holds gRPC initialised
// from its first test to its last and then shuts it down on the main thread, which joins gRPC's
// threads before main returns.
//
// Without it, the last grpc++ object to go may drop gRPC's last reference on one of gRPC's own
// threads, and gRPC then cleans up on a detached thread that can still be exiting when the process
// does. LeakSanitizer, which checks at exit, then reports that thread's OpenSSL error state (904
// bytes, held only in thread-specific data until the thread's destructors run) as leaked: a
// report that came and went in CI.
#include <grpc/grpc.h>
#include <gtest/gtest.h>

namespace {

class GrpcLifetime : public ::testing::Environment {
 public:
  void SetUp() override { grpc_init(); }
  void TearDown() override { grpc_shutdown_blocking(); }
};

[[maybe_unused]] ::testing::Environment* const registered =
    ::testing::AddGlobalTestEnvironment(new GrpcLifetime);

}  // namespace
