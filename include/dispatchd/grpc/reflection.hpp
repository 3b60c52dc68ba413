#pragma once
// gRPC server reflection (grpc.reflection.v1 and its older twin v1alpha): lets tools such as
// grpcurl and ghz list our services and fetch their schemas instead of needing .proto files.
// Answers come from the descriptors compiled into the binary (protobuf's generated pool).

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "dispatchd/grpc/server.hpp"

namespace google::protobuf {
class FileDescriptor;
}

namespace dispatchd::grpc {

class ReflectionService {
 public:
  // Fully qualified names of the services list_services reports ("docker.swarmkit.v1.Dispatcher");
  // the reflection services themselves are always reported.
  explicit ReflectionService(std::vector<std::string> service_names = {});
  // Reported from the next list_services on, also after add_to().
  void add_service(std::string name);
  void add_to(Server& server);

  const std::vector<std::string>& service_names() const noexcept { return names_; }

  // Serialized FileDescriptorProtos of `file` and everything it imports, transitively: `file`
  // first, each file once. The stream handlers send these.
  std::vector<std::string> file_with_dependencies(const google::protobuf::FileDescriptor& file);

 private:
  template <class Req, class Resp>
  void add_version(Server& server, std::string path);
  template <class Req, class Resp>
  Resp answer(const Req& req);

  const std::string& serialized(const google::protobuf::FileDescriptor& file);

  std::vector<std::string> names_;
  // FileDescriptorProto bytes by file name: descriptors never change, and a tool asks for the
  // same few files on every run.
  std::map<std::string, std::string, std::less<>> serialized_;
};

}  // namespace dispatchd::grpc
