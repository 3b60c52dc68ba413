// Server reflection judged by the gRPC C++ client: a ServerReflectionInfo stream, several
// requests on it, and descriptors complete enough to rebuild the Dispatcher's schema from
// nothing (what grpcurl and ghz do with them).

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/descriptor_database.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "support/test_server.hpp"

namespace {

namespace rv1 = grpc::reflection::v1;
namespace rv1alpha = grpc::reflection::v1alpha;
namespace pb = google::protobuf;
using dispatchd::test::TestServer;

constexpr int kNotFound = 5;

class ReflectionTest : public ::testing::Test {
 protected:
  ReflectionTest()
      : channel_(grpc::CreateChannel(server_.address(), grpc::InsecureChannelCredentials())),
        stub_(rv1::ServerReflection::NewStub(channel_)),
        stream_(stub_->ServerReflectionInfo(&ctx_)) {}

  // One request, one response, on the test's stream.
  rv1::ServerReflectionResponse ask(const rv1::ServerReflectionRequest& req) {
    EXPECT_TRUE(stream_->Write(req));
    rv1::ServerReflectionResponse resp;
    EXPECT_TRUE(stream_->Read(&resp));
    return resp;
  }
  rv1::ServerReflectionResponse ask_symbol(const std::string& symbol) {
    rv1::ServerReflectionRequest req;
    req.set_file_containing_symbol(symbol);
    return ask(req);
  }
  // Half-closes and checks that the server ends the stream cleanly.
  void finish() {
    ASSERT_TRUE(stream_->WritesDone());
    rv1::ServerReflectionResponse extra;
    EXPECT_FALSE(stream_->Read(&extra));
    grpc::Status st = stream_->Finish();
    EXPECT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  }

  static std::vector<pb::FileDescriptorProto> files(const rv1::ServerReflectionResponse& resp) {
    std::vector<pb::FileDescriptorProto> out;
    for (const auto& bytes : resp.file_descriptor_response().file_descriptor_proto()) {
      out.emplace_back();
      EXPECT_TRUE(out.back().ParseFromString(bytes));
    }
    return out;
  }

  TestServer server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<rv1::ServerReflection::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<
      grpc::ClientReaderWriter<rv1::ServerReflectionRequest, rv1::ServerReflectionResponse>>
      stream_;
};

TEST_F(ReflectionTest, ListServicesNamesTheServedServicesAndReflection) {
  rv1::ServerReflectionRequest req;
  req.set_host("localhost");
  req.set_list_services("*");
  auto resp = ask(req);
  ASSERT_TRUE(resp.has_list_services_response()) << resp.DebugString();
  std::set<std::string> names;
  for (const auto& s : resp.list_services_response().service())
    names.insert(s.name());
  EXPECT_EQ(names, (std::set<std::string>{"docker.swarmkit.v1.Dispatcher", "grpc.health.v1.Health",
                                          "docker.swarmkit.v1.Logs", "docker.swarmkit.v1.LogBroker",
                                          "dispatchd.control.v1.Control",
                                          "grpc.reflection.v1.ServerReflection",
                                          "grpc.reflection.v1alpha.ServerReflection"}));
  EXPECT_EQ(resp.valid_host(), "localhost");
  EXPECT_EQ(resp.original_request().list_services(), "*");
  finish();
}

TEST_F(ReflectionTest, DispatcherSchemaArrivesWithEveryImportAndRebuildsFromScratch) {
  auto resp = ask_symbol("docker.swarmkit.v1.Dispatcher");
  ASSERT_TRUE(resp.has_file_descriptor_response()) << resp.DebugString();
  auto protos = files(resp);
  ASSERT_FALSE(protos.empty());
  EXPECT_EQ(protos.front().name(), "dispatcher.proto");
  std::set<std::string> names;
  for (const auto& f : protos)
    EXPECT_TRUE(names.insert(f.name()).second) << f.name() << " sent twice";
  EXPECT_TRUE(names.contains("google/protobuf/duration.proto"));

  // A pool that knows only what the server sent: any missing import fails the build of a file.
  pb::SimpleDescriptorDatabase db;
  for (const auto& f : protos)
    ASSERT_TRUE(db.Add(f)) << f.name();
  pb::DescriptorPool pool(&db);
  const pb::ServiceDescriptor* svc = pool.FindServiceByName("docker.swarmkit.v1.Dispatcher");
  ASSERT_NE(svc, nullptr);
  const pb::MethodDescriptor* session = svc->FindMethodByName("Session");
  ASSERT_NE(session, nullptr);
  EXPECT_TRUE(session->server_streaming());
  EXPECT_EQ(session->output_type()->full_name(), "docker.swarmkit.v1.SessionMessage");
  for (const auto& f : protos)
    EXPECT_NE(pool.FindFileByName(f.name()), nullptr) << f.name() << " does not build";
  finish();
}

TEST_F(ReflectionTest, MethodsMessagesEnumsAndFieldsAreSymbols) {
  const std::pair<std::string, std::string> cases[] = {
      {"docker.swarmkit.v1.Dispatcher.Heartbeat", "dispatcher.proto"},
      {"docker.swarmkit.v1.HeartbeatRequest", "dispatcher.proto"},
      {"docker.swarmkit.v1.HeartbeatRequest.session_id", "dispatcher.proto"},
      {".docker.swarmkit.v1.HeartbeatResponse", "dispatcher.proto"},
      {"docker.swarmkit.v1.NodeRole", "types.proto"},
      {"docker.swarmkit.v1.LogBroker.PublishLogs", "logbroker.proto"},
      {"docker.swarmkit.v1.SubscribeLogsRequest", "logbroker.proto"},
      {"grpc.health.v1.Health", "grpc/health/v1/health.proto"},
      {"grpc.reflection.v1alpha.ServerReflection", "grpc/reflection/v1alpha/reflection.proto"},
  };
  for (const auto& [symbol, file] : cases) {
    auto resp = ask_symbol(symbol);
    auto protos = files(resp);
    ASSERT_FALSE(protos.empty()) << symbol << ": " << resp.DebugString();
    EXPECT_EQ(protos.front().name(), file) << symbol;
    EXPECT_EQ(resp.original_request().file_containing_symbol(), symbol);
  }
  finish();
}

TEST_F(ReflectionTest, UnknownSymbolIsNotFoundAndTheStreamGoesOn) {
  auto resp = ask_symbol("docker.swarmkit.v1.NoSuchThing");
  ASSERT_TRUE(resp.has_error_response()) << resp.DebugString();
  EXPECT_EQ(resp.error_response().error_code(), kNotFound);
  EXPECT_NE(resp.error_response().error_message().find("docker.swarmkit.v1.NoSuchThing"),
            std::string::npos);
  EXPECT_EQ(resp.original_request().file_containing_symbol(), "docker.swarmkit.v1.NoSuchThing");

  auto next = ask_symbol("grpc.health.v1.Health");
  EXPECT_TRUE(next.has_file_descriptor_response()) << next.DebugString();
  finish();
}

TEST_F(ReflectionTest, FilesAreFoundByName) {
  rv1::ServerReflectionRequest req;
  req.set_file_by_filename("grpc/health/v1/health.proto");
  auto protos = files(ask(req));
  ASSERT_EQ(protos.size(), 1u);
  EXPECT_EQ(protos[0].package(), "grpc.health.v1");

  req.set_file_by_filename("no/such.proto");
  auto resp = ask(req);
  ASSERT_TRUE(resp.has_error_response()) << resp.DebugString();
  EXPECT_EQ(resp.error_response().error_code(), kNotFound);
  finish();
}

TEST_F(ReflectionTest, ExtensionQueriesOnProto3Types) {
  rv1::ServerReflectionRequest req;
  req.set_all_extension_numbers_of_type("docker.swarmkit.v1.HeartbeatRequest");
  auto resp = ask(req);
  ASSERT_TRUE(resp.has_all_extension_numbers_response()) << resp.DebugString();
  EXPECT_EQ(resp.all_extension_numbers_response().base_type_name(),
            "docker.swarmkit.v1.HeartbeatRequest");
  EXPECT_EQ(resp.all_extension_numbers_response().extension_number_size(), 0);

  req.set_all_extension_numbers_of_type("docker.swarmkit.v1.Nope");
  resp = ask(req);
  ASSERT_TRUE(resp.has_error_response()) << resp.DebugString();
  EXPECT_EQ(resp.error_response().error_code(), kNotFound);

  req.mutable_file_containing_extension()->set_containing_type(
      "docker.swarmkit.v1.HeartbeatRequest");
  req.mutable_file_containing_extension()->set_extension_number(100);
  resp = ask(req);
  ASSERT_TRUE(resp.has_error_response()) << resp.DebugString();
  EXPECT_EQ(resp.error_response().error_code(), kNotFound);
  EXPECT_EQ(resp.original_request().file_containing_extension().extension_number(), 100);
  finish();
}

TEST_F(ReflectionTest, RequestsWrittenAheadAreAnsweredInOrder) {
  const std::vector<std::string> symbols = {"grpc.health.v1.Health", "missing.One",
                                            "grpc.health.v1.HealthCheckRequest", "missing.Two",
                                            "grpc.health.v1.Health.Watch"};
  for (const auto& s : symbols) {
    rv1::ServerReflectionRequest req;
    req.set_file_containing_symbol(s);
    ASSERT_TRUE(stream_->Write(req));
  }
  ASSERT_TRUE(stream_->WritesDone());
  for (const auto& s : symbols) {
    rv1::ServerReflectionResponse resp;
    ASSERT_TRUE(stream_->Read(&resp));
    EXPECT_EQ(resp.original_request().file_containing_symbol(), s);
    EXPECT_EQ(resp.has_error_response(), s.starts_with("missing.")) << s;
  }
  rv1::ServerReflectionResponse extra;
  EXPECT_FALSE(stream_->Read(&extra));
  grpc::Status st = stream_->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
}

TEST_F(ReflectionTest, EmptyStreamEndsOk) {
  finish();
}

TEST_F(ReflectionTest, V1alphaIsServedToo) {
  auto stub = rv1alpha::ServerReflection::NewStub(channel_);
  grpc::ClientContext ctx;
  auto stream = stub->ServerReflectionInfo(&ctx);
  rv1alpha::ServerReflectionRequest req;
  req.set_file_containing_symbol("docker.swarmkit.v1.Dispatcher");
  ASSERT_TRUE(stream->Write(req));
  rv1alpha::ServerReflectionResponse resp;
  ASSERT_TRUE(stream->Read(&resp));
  ASSERT_GT(resp.file_descriptor_response().file_descriptor_proto_size(), 1);
  pb::FileDescriptorProto first;
  ASSERT_TRUE(first.ParseFromString(resp.file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(first.name(), "dispatcher.proto");
  ASSERT_TRUE(stream->WritesDone());
  EXPECT_FALSE(stream->Read(&resp));
  EXPECT_TRUE(stream->Finish().ok());
  finish();
}

TEST_F(ReflectionTest, ServicesAddedLaterAreListed) {
  server_.call([&] {
    server_.server().reflection().add_service("docker.swarmkit.v1.Control");
    return 0;
  });
  rv1::ServerReflectionRequest req;
  req.set_list_services("");
  auto resp = ask(req);
  std::vector<std::string> names;
  for (const auto& s : resp.list_services_response().service())
    names.push_back(s.name());
  EXPECT_NE(std::ranges::find(names, "docker.swarmkit.v1.Control"), names.end());
  finish();
}

}  // namespace
