// Mutual TLS: identity from the client certificate, SwarmKit's authorization messages, and
// what is refused at the handshake — judged by the real grpc++ client and by OpenSSL itself.

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "dispatcher.grpc.pb.h"
#include "support/agent.hpp"
#include "support/certs.hpp"
#include "support/frames.hpp"
#include "support/raw_client.hpp"
#include "support/test_server.hpp"

namespace {

using dispatchd::test::Metadata;
using dispatchd::test::read_file;

namespace api = docker::swarmkit::v1;
using dispatchd::test::TestServer;

const std::string& cert_dir() {
  static const std::string dir = dispatchd::test::make_test_certs(
      "tls", "--org myorg --nodes 2 --manager-id mgr-0 --test-variants");
  return dir;
}

dispatchd::app::Options tls_options() {
  auto o = TestServer::default_options();
  o.insecure = false;
  o.tls = {cert_dir() + "/server.pem", cert_dir() + "/server.key", cert_dir() + "/ca.pem"};
  return o;
}

class TlsTest : public ::testing::Test {
 protected:
  TlsTest() : server_(tls_options()) {}

  // A channel presenting `name`.pem/.key ("" = no client certificate).
  std::shared_ptr<grpc::Channel> channel(const std::string& name) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read_file(cert_dir() + "/ca.pem");
    if (!name.empty()) {
      o.pem_private_key = read_file(cert_dir() + "/" + name + ".key");
      o.pem_cert_chain = read_file(cert_dir() + "/" + name + ".pem");
    }
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("swarm-manager");  // as agents dial
    return grpc::CreateCustomChannel(server_.address(), grpc::SslCredentials(o), args);
  }

  grpc::Status heartbeat(const std::string& cert, const std::string& session_id = "",
                         const std::vector<std::pair<std::string, std::string>>& md = {}) {
    auto stub = api::Dispatcher::NewStub(channel(cert));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    for (const auto& [k, v] : md)
      ctx.AddMetadata(k, v);
    api::HeartbeatRequest req;
    req.set_session_id(session_id);
    api::HeartbeatResponse resp;
    return stub->Heartbeat(&ctx, req, &resp);
  }

  TestServer server_;
};

const std::string kWrap =
    "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = ";

TEST_F(TlsTest, ValidWorkerCertificateIsAcceptedAndItsCommonNameIsTheNodeId) {
  auto stub = api::Dispatcher::NewStub(channel("node-1"));
  // Metadata cannot claim an identity under TLS.
  auto session = dispatchd::test::open_session(*stub, Metadata{{"node-id", "somebody-else"}});
  ASSERT_TRUE(session->ok);
  const api::SessionMessage& first = session->first;
  EXPECT_EQ(first.node().id(), "node-1");
  EXPECT_EQ(first.node().role(), api::WORKER);
  ASSERT_EQ(first.managers_size(), 1);
  EXPECT_EQ(first.managers(0).peer().node_id(), "mgr-0");  // the server certificate's CN
  EXPECT_EQ(first.rootca(), read_file(cert_dir() + "/ca.pem"));
  EXPECT_TRUE(heartbeat("node-1", first.session_id()).ok());
  session->stream->cancel();
  session->stream->finish();
}

TEST_F(TlsTest, ManagerCertificateRegistersAManagerNode) {
  auto stub = api::Dispatcher::NewStub(channel("manager"));
  auto session = dispatchd::test::open_session(*stub, Metadata{});
  ASSERT_TRUE(session->ok);
  const api::SessionMessage& first = session->first;
  EXPECT_EQ(first.node().id(), "node-m1");
  EXPECT_EQ(first.node().role(), api::MANAGER);
  session->stream->cancel();
  session->stream->finish();
}

TEST_F(TlsTest, NoClientCertificateIsPermissionDeniedWithSwarmKitsMessage) {
  grpc::Status st = heartbeat("");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(), kWrap + "no client certificates in request");
}

TEST_F(TlsTest, WrongOrganizationIsRefused) {
  grpc::Status st = heartbeat("wrong-org");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(),
            kWrap + "Permission denied: remote certificate not part of organization: myorg");
}

TEST_F(TlsTest, WrongRoleIsRefused) {
  grpc::Status st = heartbeat("wrong-role");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(), kWrap +
                                    "Permission denied: remote certificate not part of OUs: "
                                    "[swarm-worker swarm-manager]");
}

TEST_F(TlsTest, RemovedNodeIsRefused) {
  server_.call([&] {
    return server_.server().store().update([](dispatchd::store::WriteTx& tx) {
      auto c = *tx.cluster();
      (*c.mutable_blacklisted_certificates())["node-2"];
      return tx.update(std::move(c));
    });
  });
  grpc::Status st = heartbeat("node-2");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(), kWrap + "Permission denied: node node-2 was removed from swarm");
  EXPECT_EQ(heartbeat("node-1").error_code(), grpc::StatusCode::NOT_FOUND);  // others unaffected
}

TEST_F(TlsTest, ForwardedRequestFromAManagerUsesTheForwardedIdentity) {
  auto stub = api::Dispatcher::NewStub(channel("manager"));
  auto session =
      dispatchd::test::open_session(*stub, Metadata{{"forwarded_cert", "true"},
                                                    {"forwarded_cert_cn", "node-far"},
                                                    {"forwarded_cert_ou", "swarm-worker"},
                                                    {"forwarded_cert_org", "myorg"},
                                                    {"remote_addr", "10.1.2.3:4567"}});
  ASSERT_TRUE(session->ok);
  const api::SessionMessage& first = session->first;
  EXPECT_EQ(first.node().id(), "node-far");
  EXPECT_EQ(first.node().status().addr(), "10.1.2.3");  // the original agent's address
  session->stream->cancel();
  session->stream->finish();
}

TEST_F(TlsTest, ForwardedRequestsAreRefusedUnlessEveryRuleHolds) {
  const std::vector<std::pair<std::string, std::string>> good = {
      {"forwarded_cert", "true"},
      {"forwarded_cert_cn", "node-far"},
      {"forwarded_cert_ou", "swarm-worker"},
      {"forwarded_cert_org", "myorg"}};
  auto without = [&](const std::string& key) {
    auto v = good;
    std::erase_if(v, [&](const auto& kv) { return kv.first == key; });
    return v;
  };
  auto with = [&](const std::string& key, const std::string& value) {
    auto v = without(key);
    v.emplace_back(key, value);
    return v;
  };
  grpc::Status st = heartbeat("node-1", "", good);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(st.error_message(),
            "Permission denied: unauthorized forwarder role: rpc error: code = PermissionDenied "
            "desc = Permission denied: remote certificate not part of OUs: [swarm-manager]");
  for (const char* key : {"forwarded_cert_cn", "forwarded_cert_ou", "forwarded_cert_org"}) {
    st = heartbeat("manager", "", without(key));
    EXPECT_EQ(st.error_message(), "Permission denied: missing information in forwarded request")
        << key;
  }
  st = heartbeat("manager", "", with("forwarded_cert_ou", "swarm-auditor"));
  EXPECT_EQ(st.error_message(),
            "Permission denied: unauthorized forwarded role, expecting: [swarm-worker "
            "swarm-manager]");
  st = heartbeat("manager", "", with("forwarded_cert_org", "other-org"));
  EXPECT_EQ(st.error_message(), "Permission denied: organization mismatch, expecting: myorg");
  // Valid: the forwarded node has no session, which is the next check.
  st = heartbeat("manager", "", good);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(TlsTest, UntrustedExpiredAndSelfSignedCertificatesFailTheHandshake) {
  for (const char* name : {"untrusted", "expired", "self-signed"}) {
    grpc::Status st = heartbeat(name);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << name << ": " << st.error_message();
  }
  // The server is unharmed.
  EXPECT_EQ(heartbeat("node-1").error_code(), grpc::StatusCode::NOT_FOUND);
}

// A bare OpenSSL client: what grpc++ will not do (no ALPN, old protocol versions).
struct RawTls {
  int fd = -1;
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  // `root_copies`: the CA certificate appended that many times to the chain the client sends.
  RawTls(unsigned short port, const char* alpn, int max_version, const std::string& cert,
         int root_copies = 0) {
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_max_proto_version(ctx, max_version);
    SSL_CTX_set_min_proto_version(ctx, TLS1_VERSION);
    SSL_CTX_set_security_level(ctx, 0);
    if (!cert.empty()) {
      SSL_CTX_use_certificate_file(ctx, (cert_dir() + "/" + cert + ".pem").c_str(),
                                   SSL_FILETYPE_PEM);
      SSL_CTX_use_PrivateKey_file(ctx, (cert_dir() + "/" + cert + ".key").c_str(),
                                  SSL_FILETYPE_PEM);
    }
    for (int i = 0; i < root_copies; ++i) {
      BIO* b = BIO_new_file((cert_dir() + "/ca.pem").c_str(), "r");
      X509* root = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
      BIO_free(b);
      SSL_CTX_add0_chain_cert(ctx, root);
    }
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (alpn) {
      std::string wire = std::string(1, static_cast<char>(std::strlen(alpn))) + alpn;
      SSL_set_alpn_protos(ssl, reinterpret_cast<const unsigned char*>(wire.data()),
                          static_cast<unsigned>(wire.size()));
    }
  }
  bool handshake() { return SSL_connect(ssl) == 1; }
  // Handshake, then the HTTP/2 preface, and the server's first bytes back. (A TLS 1.3 client
  // finishes its handshake before the server has judged the client's certificate; a refusal
  // arrives as an alert on the first read.)
  bool served() {
    static constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\4\0\0\0\0\0";
    if (!handshake() || SSL_write(ssl, kPreface, sizeof kPreface - 1) <= 0) return false;
    char buf[64];
    return SSL_read(ssl, buf, sizeof buf) > 0;
  }
  // Certificates the server sent, its own included.
  int peer_chain_length() {
    STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl);
    return chain ? sk_X509_num(chain) : 0;
  }
  std::string peer_serial() {
    X509* c = SSL_get0_peer_certificate(ssl);
    if (!c) return {};
    BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(c), nullptr);
    char* hex = BN_bn2hex(bn);
    std::string s(hex);
    OPENSSL_free(hex);
    BN_free(bn);
    return s;
  }
  ~RawTls() {
    if (ssl) SSL_free(ssl);
    if (ctx) SSL_CTX_free(ctx);
    if (fd >= 0) ::close(fd);
  }
};

TEST_F(TlsTest, ClientWithoutAlpnH2IsRefused) {
  RawTls no_alpn(server_.port(), nullptr, TLS1_3_VERSION, "node-1");
  EXPECT_FALSE(no_alpn.handshake());
  RawTls http1(server_.port(), "http/1.1", TLS1_3_VERSION, "node-1");
  EXPECT_FALSE(http1.handshake());
  RawTls h2(server_.port(), "h2", TLS1_3_VERSION, "node-1");
  EXPECT_TRUE(h2.handshake());
}

TEST_F(TlsTest, ServerSendsItsChainWithoutTheRoot) {
  // server.pem is signed by the root itself: the chain is the server certificate alone, as a
  // SwarmKit manager sends it (the root is the agents' trust anchor).
  RawTls h2(server_.port(), "h2", TLS1_3_VERSION, "node-1");
  ASSERT_TRUE(h2.handshake());
  EXPECT_EQ(h2.peer_chain_length(), 1);
}

TEST_F(TlsTest, ClientChainsUpToEightCertificatesAreAcceptedLongerOnesAreNot) {
  // Leaf and root, as an OpenSSL client sends by default; then the most allowed; then one more.
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    for (int copies : {0, 1, 7}) {
      RawTls ok(server_.port(), "h2", version, "node-1", copies);
      EXPECT_TRUE(ok.served()) << version << " " << copies;
    }
    RawTls too_long(server_.port(), "h2", version, "node-1", 8);
    EXPECT_FALSE(too_long.served()) << version;
  }
  // The server is unharmed.
  EXPECT_EQ(heartbeat("node-1").error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(TlsTest, Tls12IsAcceptedAndOlderVersionsAreNot) {
  RawTls v12(server_.port(), "h2", TLS1_2_VERSION, "node-1");
  EXPECT_TRUE(v12.handshake());
  RawTls v11(server_.port(), "h2", TLS1_1_VERSION, "node-1");
  EXPECT_FALSE(v11.handshake());
}

TEST_F(TlsTest, ReloadedCertificatesServeNewConnectionsWithoutDroppingLiveSessions) {
  auto stub = api::Dispatcher::NewStub(channel("node-1"));
  auto session = dispatchd::test::open_session(*stub, Metadata{});
  ASSERT_TRUE(session->ok);
  std::string before;
  {
    RawTls probe(server_.port(), "h2", TLS1_3_VERSION, "node-1");
    ASSERT_TRUE(probe.handshake());
    before = probe.peer_serial();
  }
  // A new server certificate from the same CA (as a renewal would be), loaded as SIGHUP does.
  std::string cmd = std::string(DISPATCHD_SOURCE_DIR) + "/scripts/gen-certs.sh --out " +
                    cert_dir() + " --org myorg --nodes 0 --manager-id mgr-0 >/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto ctx2 = dispatchd::net::TlsContext::load(tls_options().tls);
  ASSERT_TRUE(ctx2.has_value()) << ctx2.error();
  server_.call([&] {
    server_.server().set_tls(*ctx2);
    return 0;
  });
  RawTls probe(server_.port(), "h2", TLS1_3_VERSION, "node-1");
  ASSERT_TRUE(probe.handshake());
  EXPECT_NE(probe.peer_serial(), before);
  // The live session still works: a manager-list change reaches it.
  server_.call([&] {
    return server_.server().store().update([](dispatchd::store::WriteTx& tx) {
      api::WeightedPeer p;
      p.mutable_peer()->set_node_id("mgr-9");
      p.mutable_peer()->set_addr("10.0.0.9:4242");
      p.set_weight(10);
      tx.set_managers({p});
      return dispatchd::grpc::Status::ok();
    });
  });
  api::SessionMessage next;
  ASSERT_TRUE(session->stream->read(next));
  ASSERT_EQ(next.managers_size(), 1);
  EXPECT_EQ(next.managers(0).peer().node_id(), "mgr-9");
  session->stream->cancel();
  session->stream->finish();
}

// Two TLS records in one TCP segment: OpenSSL returns one record per read, and the server then
// waits for readiness with the second record already in the socket. That wait must still
// complete (asio re-arms its edge-triggered epoll registration for each wait); were it to wait
// for new data, the request in the second record would sit there until the client sent more.
TEST_F(TlsTest, RecordsArrivingTogetherAreAllRead) {
  namespace frames = dispatchd::test::frames;
  RawTls c(server_.port(), "h2", TLS1_3_VERSION, "node-1");
  ASSERT_TRUE(c.handshake());
  timeval tv{5, 0};
  ::setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  // Encrypt into memory, then send both records with one write.
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set0_wbio(c.ssl, out);
  std::string opening = std::string(frames::kPreface) + frames::settings();
  std::string request =
      frames::headers(1, frames::grpc_request_block("/grpc.health.v1.Health/Check"),
                      frames::kEndHeaders) +
      frames::data(1, dispatchd::test::grpc_frame(""), true);
  ASSERT_EQ(SSL_write(c.ssl, opening.data(), static_cast<int>(opening.size())),
            static_cast<int>(opening.size()));
  ASSERT_EQ(SSL_write(c.ssl, request.data(), static_cast<int>(request.size())),
            static_cast<int>(request.size()));
  char* bytes = nullptr;
  long n = BIO_get_mem_data(out, &bytes);
  ASSERT_GT(n, 0);
  ASSERT_EQ(::send(c.fd, bytes, static_cast<std::size_t>(n), MSG_NOSIGNAL), n);
  // The answer to stream 1 arrives without the client sending anything more.
  std::string inbox;
  bool answered = false;
  while (!answered) {
    char buf[4096];
    int r = SSL_read(c.ssl, buf, sizeof buf);
    if (r <= 0) break;
    inbox.append(buf, static_cast<std::size_t>(r));
    for (const auto& f : frames::parse(inbox)) {
      if (f.type == frames::kHeaders && f.stream_id == 1 && (f.flags & frames::kEndStream)) {
        answered = true;
      }
    }
  }
  EXPECT_TRUE(answered) << "the second record was not read";
}

// SIGHUP reloads --tls-ca with the certificates: a bundle with a new CA lets that CA's agents in,
// for new connections, while the old CA's keep working (a root rotation, docs/operations.md).
TEST_F(TlsTest, ReloadedCaBundleTrustsANewCaForNewConnections) {
  const std::string other =
      dispatchd::test::make_test_certs("tls-newca", "--org myorg --nodes 1 --manager-id mgr-0");
  auto heartbeat_from = [&](const std::string& dir) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read_file(cert_dir() + "/ca.pem");  // the server's own CA is unchanged
    o.pem_private_key = read_file(dir + "/node-1.key");
    o.pem_cert_chain = read_file(dir + "/node-1.pem");
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("swarm-manager");
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a fresh connection every time
    auto stub = api::Dispatcher::NewStub(
        grpc::CreateCustomChannel(server_.address(), grpc::SslCredentials(o), args));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    api::HeartbeatResponse resp;
    return stub->Heartbeat(&ctx, api::HeartbeatRequest{}, &resp).error_code();
  };
  ASSERT_NE(read_file(other + "/ca.pem"), read_file(cert_dir() + "/ca.pem"));
  EXPECT_EQ(heartbeat_from(other), grpc::StatusCode::UNAVAILABLE);  // handshake refused

  const std::string bundle = other + "/bundle.pem";
  {
    std::ofstream out(bundle, std::ios::binary);
    out << read_file(cert_dir() + "/ca.pem") << read_file(other + "/ca.pem");
  }
  auto files = tls_options().tls;
  files.ca = bundle;
  auto ctx = dispatchd::net::TlsContext::load(files);  // what SIGHUP does
  ASSERT_TRUE(ctx.has_value()) << ctx.error();
  server_.call([&] {
    server_.server().set_tls(*ctx);
    return 0;
  });
  // Authenticated now: the call reaches the Dispatcher, which knows no session of node-1.
  EXPECT_EQ(heartbeat_from(other), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(heartbeat_from(cert_dir()), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
