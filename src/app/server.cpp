#include "dispatchd/app/server.hpp"

#include "dispatchd/log.hpp"
#include "dispatchd/net/tcp_transport.hpp"

namespace dispatchd::app {

Server::Server(asio::io_context& io, Options options)
    : io_(io),
      options_(std::move(options)),
      wheel_(io),
      grpc_(wheel_, options_.grpc),
      dispatcher_(options_.dispatcher),
      acceptor_(io),
      connections_scope_(io.get_executor()) {
  health_.add_to(grpc_);
  health_.set_status("docker.swarmkit.v1.Dispatcher", grpc::HealthService::serving);
  dispatcher_.add_to(grpc_);
}

Server::~Server() = default;

std::expected<asio::ip::tcp::endpoint, std::string> Server::listen() {
  auto ep = net::resolve_listen_address(options_.listen);
  if (!ep) return ep;
  return acceptor_.listen(*ep);
}

asio::awaitable<void> Server::run() {
  co_await acceptor_.run([this](asio::ip::tcp::socket socket) {
    if (stopping_) return;
    if (connection_count_ >= options_.max_connections) {
      log::warn("refusing connection: {} connections open (--max-connections)", connection_count_);
      std::error_code ec;
      socket.close(ec);
      return;
    }
    auto transport = std::make_unique<net::TcpTransport>(std::move(socket));
    auto c = std::make_shared<h2::Connection>(std::move(transport), grpc_, options_.h2, wheel_);
    connections_scope_.spawn(serve_connection(std::move(c)));
  });
  co_await connections_scope_.join();
}

asio::awaitable<void> Server::serve_connection(std::shared_ptr<h2::Connection> c) {
  connections_.push_back(*c);
  ++connection_count_;
  log::debug("{}: connection opened", c->peer());
  if (stopping_) c->shutdown();
  co_await c->run();
  --connection_count_;
  c->unlink();
  log::debug("{}: connection closed ({} bytes in, {} bytes out, {} streams)", c->peer(),
             c->stats().bytes_in, c->stats().bytes_out, c->stats().streams);
}

void Server::stop() {
  if (stopping_) return;
  stopping_ = true;
  log::info("stopping: {} connections, {} sessions", connection_count_,
            dispatcher_.open_sessions());
  acceptor_.close();
  health_.shutdown();
  // Sessions send their final message and end before the connections go away.
  dispatcher_.stop();
  connections_.for_each([](h2::Connection& c) { c.shutdown(); });
}

}  // namespace dispatchd::app
