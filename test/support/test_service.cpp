#include "support/test_service.hpp"

#include "dispatchd/co/event.hpp"
#include "test_service.pb.h"

namespace dispatchd::test {

namespace pb = ::dispatchd::test;  // generated messages live in dispatchd::test too
using grpc::Status;
using grpc::StatusCode;

void add_test_service(grpc::Server& server, TestServiceState& st) {
  server.add_unary<pb::EchoRequest, pb::EchoReply>(
      "/dispatchd.test.TestService/Echo",
      [](grpc::ServerContext& ctx,
         const pb::EchoRequest& req) -> asio::awaitable<std::expected<pb::EchoReply, Status>> {
        pb::EchoReply r;
        r.set_payload(req.payload());
        for (const auto& key : req.metadata_keys()) {
          if (key.ends_with("-bin")) {
            r.add_metadata(ctx.binary_metadata(key).value_or("<absent>"));
          } else {
            r.add_metadata(std::string(ctx.metadata(key).value_or("<absent>")));
          }
        }
        co_return r;
      });

  server.add_unary<pb::FailRequest, pb::EchoReply>(
      "/dispatchd.test.TestService/Fail",
      [](grpc::ServerContext&,
         const pb::FailRequest& req) -> asio::awaitable<std::expected<pb::EchoReply, Status>> {
        co_return std::unexpected(Status(static_cast<StatusCode>(req.code()), req.message()));
      });

  server.add_server_streaming<pb::StreamRequest, pb::Chunk>(
      "/dispatchd.test.TestService/Stream",
      [&st](grpc::ServerContext&, const pb::StreamRequest& req,
            grpc::Writer<pb::Chunk>& writer) -> asio::awaitable<Status> {
        st.stream_written = 0;
        st.stream_done = false;
        st.stream_aborted = false;
        pb::Chunk c;
        for (std::uint32_t i = 0; i < req.count(); ++i) {
          c.set_index(i);
          c.set_data(std::string(req.size(), static_cast<char>('a' + i % 26)));
          st.stream_blocked = true;
          bool ok = co_await writer.write(c);
          st.stream_blocked = false;
          if (!ok) {
            st.stream_aborted = true;
            co_return Status(StatusCode::cancelled, "context canceled");
          }
          ++st.stream_written;
        }
        st.stream_done = true;
        co_return Status::ok();
      });

  server.add_unary<pb::Empty, pb::Empty>(
      "/dispatchd.test.TestService/Hang",
      [&st](grpc::ServerContext& ctx,
            const pb::Empty&) -> asio::awaitable<std::expected<pb::Empty, Status>> {
        ++st.hang_started;
        co_await ctx.cancelled().wait();
        ++st.hang_cancelled;
        if (ctx.deadline_exceeded()) ++st.hang_deadline_exceeded;
        co_return std::unexpected(Status(StatusCode::cancelled, "context canceled"));
      });

  server.add_server_streaming<pb::Empty, pb::Chunk>(
      "/dispatchd.test.TestService/HangStream",
      [&st](grpc::ServerContext& ctx, const pb::Empty&,
            grpc::Writer<pb::Chunk>& writer) -> asio::awaitable<Status> {
        ++st.hang_started;
        pb::Chunk c;
        c.set_index(0);
        co_await writer.write(c);
        co_await ctx.cancelled().wait();
        ++st.hang_cancelled;
        if (ctx.deadline_exceeded()) ++st.hang_deadline_exceeded;
        co_return Status(StatusCode::cancelled, "context canceled");
      });

  server.add_bidi_streaming<pb::EchoRequest, pb::EchoReply>(
      "/dispatchd.test.TestService/EchoStream",
      [&st](grpc::ServerContext&, grpc::Reader<pb::EchoRequest>& reader,
            grpc::Writer<pb::EchoReply>& writer) -> asio::awaitable<Status> {
        for (;;) {
          st.echo_stream_reading = true;
          auto req = co_await reader.read();
          st.echo_stream_reading = false;
          if (!req || !*req) {
            st.echo_stream_read_end = req ? StatusCode::ok : req.error().code();
            ++st.echo_stream_ended;
            co_return req ? Status::ok() : req.error();
          }
          ++st.echo_stream_received;
          pb::EchoReply r;
          r.set_payload((*req)->payload());
          if (!co_await writer.write(r)) {
            ++st.echo_stream_write_failed;
            co_return Status(StatusCode::cancelled, "write failed");
          }
        }
      });

  server.add_client_streaming<pb::EchoRequest, pb::EchoReply>(
      "/dispatchd.test.TestService/Concat",
      [&st](grpc::ServerContext&, grpc::Reader<pb::EchoRequest>& reader)
          -> asio::awaitable<std::expected<pb::EchoReply, Status>> {
        pb::EchoReply r;
        for (;;) {
          auto req = co_await reader.read();
          if (!req || !*req) {
            st.echo_stream_read_end = req ? StatusCode::ok : req.error().code();
            ++st.echo_stream_ended;
            if (!req) co_return std::unexpected(req.error());
            co_return r;
          }
          ++st.echo_stream_received;
          r.mutable_payload()->append((*req)->payload());
        }
      });

  server.add_client_streaming<pb::Empty, pb::EchoReply>(
      "/dispatchd.test.TestService/Stall",
      [&st](grpc::ServerContext& ctx, grpc::Reader<pb::Empty>& reader)
          -> asio::awaitable<std::expected<pb::EchoReply, Status>> {
        ++st.stall_started;
        {
          co::Wakeup wakeup;
          co::Event::Listener released(st.stall_release, wakeup);
          co::Event::Listener cancelled(ctx.cancelled(), wakeup);
          while (!released.ready() && !cancelled.ready())
            co_await wakeup.async_park();
        }
        st.stall_read = 0;
        for (;;) {
          auto req = co_await reader.read();
          if (!req || !*req) {
            st.stall_read_end = req ? StatusCode::ok : req.error().code();
            st.stall_ended = true;
            if (!req) co_return std::unexpected(req.error());
            break;
          }
          ++st.stall_read;
        }
        pb::EchoReply r;
        r.set_payload(std::to_string(st.stall_read));
        co_return r;
      });
}

}  // namespace dispatchd::test
