// Context: the channel to dispatchd (TLS or insecure), each call's deadline and identity
// metadata, and how results and errors are printed.

#include <google/protobuf/util/json_util.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "dispatchd/ctl/cli.hpp"
#include "dispatchd/ctl/command.hpp"
#include "dispatchd/status.hpp"

namespace dispatchd::ctl {

namespace cv1 = dispatchd::control::v1;

std::string read_file(const std::string& flag, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw RunError("cannot read " + flag + " " + path + ": " + std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string read_file_or_stdin(const std::string& what, const std::string& path) {
  if (path != "-") return read_file(what, path);
  std::stringstream ss;
  ss << std::cin.rdbuf();
  return ss.str();
}

google::protobuf::Map<std::string, std::string> label_flags(const ParsedArgs& a,
                                                            const std::string& flag) {
  google::protobuf::Map<std::string, std::string> labels;
  for (const auto& v : a.all(flag)) {
    auto eq = v.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw UsageError("invalid --" + flag + " " + v + ": want KEY=VALUE");
    }
    labels[v.substr(0, eq)] = v.substr(eq + 1);
  }
  return labels;
}

std::shared_ptr<grpc::Channel> Context::channel() {
  if (channel_) return channel_;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReceiveMessageSize);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (opt.insecure) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    if (!opt.tls_ca.empty()) ssl.pem_root_certs = read_file("--tls-ca", opt.tls_ca);
    if (!opt.tls_cert.empty()) {
      ssl.pem_cert_chain = read_file("--tls-cert", opt.tls_cert);
      ssl.pem_private_key = read_file("--tls-key", opt.tls_key);
    }
    creds = grpc::SslCredentials(ssl);
    if (!opt.server_name.empty()) args.SetSslTargetNameOverride(opt.server_name);
  }
  channel_ = grpc::CreateCustomChannel(opt.addr, creds, args);
  return channel_;
}

std::unique_ptr<grpc::ClientContext> Context::call() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() +
                  std::chrono::duration_cast<std::chrono::system_clock::duration>(opt.timeout));
  if (opt.insecure) {
    c->AddMetadata("node-id", opt.node_id);
    c->AddMetadata("node-role", "swarm-manager");
    c->AddMetadata("node-org", opt.org);
  }
  return c;
}

std::unique_ptr<cv1::Control::Stub> Context::control() {
  return cv1::Control::NewStub(channel());
}

int Context::fail(const grpc::Status& st) {
  err += "dispatchctl: " + status_code_constant(st.error_code()) + ": " + st.error_message() + "\n";
  return 1;
}

void Context::json(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  std::string s;
  auto st = google::protobuf::util::MessageToJsonString(m, &s, o);
  if (!st.ok()) throw RunError("cannot print the response as JSON: " + st.ToString());
  out += s;
  out += '\n';
}

}  // namespace dispatchd::ctl
