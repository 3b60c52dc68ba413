#include "dispatchd/grpc/reflection.hpp"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <algorithm>

#include "grpc/reflection/v1/reflection.pb.h"
#include "grpc/reflection/v1alpha/reflection.pb.h"

namespace dispatchd::grpc {

namespace pb = ::google::protobuf;

namespace {
constexpr std::string_view kV1 = "grpc.reflection.v1.ServerReflection";
constexpr std::string_view kV1alpha = "grpc.reflection.v1alpha.ServerReflection";

const pb::DescriptorPool& pool() {
  return *pb::DescriptorPool::generated_pool();
}

// Tools sometimes write fully qualified names with protobuf's leading dot (".pkg.Type").
std::string_view symbol_name(std::string_view s) {
  if (s.starts_with('.')) s.remove_prefix(1);
  return s;
}

template <class Resp>
void set_error(Resp& resp, StatusCode code, std::string message) {
  auto* e = resp.mutable_error_response();
  e->set_error_code(static_cast<int>(code));
  e->set_error_message(std::move(message));
}
}  // namespace

ReflectionService::ReflectionService(std::vector<std::string> service_names)
    : names_(std::move(service_names)) {}

void ReflectionService::add_service(std::string name) {
  if (std::ranges::find(names_, name) == names_.end()) names_.push_back(std::move(name));
}

const std::string& ReflectionService::serialized(const pb::FileDescriptor& file) {
  auto it = serialized_.find(file.name());
  if (it == serialized_.end()) {
    pb::FileDescriptorProto proto;
    file.CopyTo(&proto);
    it = serialized_.emplace(file.name(), proto.SerializeAsString()).first;
  }
  return it->second;
}

std::vector<std::string> ReflectionService::file_with_dependencies(const pb::FileDescriptor& file) {
  // Breadth first from the requested file, so it comes first and each file appears once.
  std::vector<const pb::FileDescriptor*> order{&file};
  for (std::size_t i = 0; i < order.size(); ++i) {
    for (int d = 0; d < order[i]->dependency_count(); ++d) {
      const pb::FileDescriptor* dep = order[i]->dependency(d);
      if (std::ranges::find(order, dep) == order.end()) order.push_back(dep);
    }
  }
  std::vector<std::string> out;
  out.reserve(order.size());
  for (const auto* f : order)
    out.push_back(serialized(*f));
  return out;
}

template <class Req, class Resp>
Resp ReflectionService::answer(const Req& req) {
  Resp resp;
  resp.set_valid_host(req.host());
  *resp.mutable_original_request() = req;

  auto send_file = [&](const pb::FileDescriptor* file) {
    auto* files = resp.mutable_file_descriptor_response();
    for (auto& bytes : file_with_dependencies(*file))
      files->add_file_descriptor_proto(std::move(bytes));
  };

  switch (req.message_request_case()) {
    case Req::kFileByFilename: {
      if (const auto* f = pool().FindFileByName(req.file_by_filename())) {
        send_file(f);
      } else {
        set_error(resp, StatusCode::not_found, "file not found: " + req.file_by_filename());
      }
      break;
    }
    case Req::kFileContainingSymbol: {
      std::string name(symbol_name(req.file_containing_symbol()));
      if (const auto* f = pool().FindFileContainingSymbol(name)) {
        send_file(f);
      } else {
        set_error(resp, StatusCode::not_found, "symbol not found: " + name);
      }
      break;
    }
    case Req::kFileContainingExtension: {
      const auto& ext = req.file_containing_extension();
      std::string type(symbol_name(ext.containing_type()));
      const auto* message = pool().FindMessageTypeByName(type);
      const auto* field =
          message ? pool().FindExtensionByNumber(message, ext.extension_number()) : nullptr;
      if (field) {
        send_file(field->file());
      } else if (!message) {
        set_error(resp, StatusCode::not_found, "message type not found: " + type);
      } else {
        set_error(resp, StatusCode::not_found,
                  "extension not found: " + type + " has no extension number " +
                      std::to_string(ext.extension_number()));
      }
      break;
    }
    case Req::kAllExtensionNumbersOfType: {
      std::string type(symbol_name(req.all_extension_numbers_of_type()));
      if (const auto* message = pool().FindMessageTypeByName(type)) {
        std::vector<const pb::FieldDescriptor*> extensions;
        pool().FindAllExtensions(message, &extensions);
        auto* numbers = resp.mutable_all_extension_numbers_response();
        numbers->set_base_type_name(type);
        for (const auto* e : extensions)
          numbers->add_extension_number(e->number());
      } else {
        set_error(resp, StatusCode::not_found, "message type not found: " + type);
      }
      break;
    }
    case Req::kListServices: {
      auto* list = resp.mutable_list_services_response();
      for (const auto& name : names_)
        list->add_service()->set_name(name);
      list->add_service()->set_name(std::string(kV1));
      list->add_service()->set_name(std::string(kV1alpha));
      break;
    }
    case Req::MESSAGE_REQUEST_NOT_SET:
      // As gRPC's C++ server does: an error response, and the stream goes on.
      set_error(resp, StatusCode::unimplemented, "the request sets no message_request field");
      break;
  }
  return resp;
}

template <class Req, class Resp>
void ReflectionService::add_version(Server& server, std::string path) {
  server.add_bidi_streaming<Req, Resp>(
      std::move(path),
      [this](ServerContext&, Reader<Req>& reader, Writer<Resp>& writer) -> asio::awaitable<Status> {
        for (;;) {
          auto req = co_await reader.read();
          if (!req) co_return req.error();
          if (!*req) co_return Status::ok();  // the client half-closed: every answer is sent
          if (!co_await writer.write(answer<Req, Resp>(**req))) {
            co_return Status(StatusCode::cancelled, "context canceled");
          }
        }
      });
}

void ReflectionService::add_to(Server& server) {
  namespace v1 = ::grpc::reflection::v1;
  namespace v1alpha = ::grpc::reflection::v1alpha;
  add_version<v1::ServerReflectionRequest, v1::ServerReflectionResponse>(
      server, "/" + std::string(kV1) + "/ServerReflectionInfo");
  add_version<v1alpha::ServerReflectionRequest, v1alpha::ServerReflectionResponse>(
      server, "/" + std::string(kV1alpha) + "/ServerReflectionInfo");
}

}  // namespace dispatchd::grpc
