// The ceiling for the gateway's HTTP numbers: a minimal Boost.Beast server with the gateway's
// threading model (N threads running one io_context, one coroutine per connection, no worker
// hop), answering every request with the same ~600-byte FHIR Patient.
//
//   bench_raw_beast --listen 127.0.0.1:18081 --threads 2
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdlib>
#include <iostream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

const std::string patient_json =
    R"({"resourceType":"Patient","id":"bench-patient-0001","meta":{"versionId":"1",)"
    R"("lastUpdated":"2026-11-23T12:00:00.000Z"},"identifier":[{"system":"urn:oid:2.16.840.1.113883.2.4.6.3",)"
    R"("value":"738472983"},{"system":"http://hospital.example.org/mrn","value":"MRN-0001"}],"active":true,)"
    R"("name":[{"use":"official","family":"Lindqvist","given":["Astrid","Maria"]},{"use":"usual",)"
    R"("given":["Asta"]}],"telecom":[{"system":"phone","value":"+46 8 123 456 78","use":"home"},)"
    R"({"system":"email","value":"astrid.lindqvist@example.org"}],"gender":"female","birthDate":"1974-12-25",)"
    R"("address":[{"use":"home","line":["Storgatan 12"],"city":"Uppsala","postalCode":"753 20",)"
    R"("country":"SE"}],"managingOrganization":{"reference":"Organization/1"}})";

asio::awaitable<void> session(tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  beast::flat_buffer buffer;
  for (;;) {
    http::request<http::string_body> req;
    stream.expires_after(std::chrono::seconds(60));
    auto [ec, n] = co_await http::async_read(stream, buffer, req, use_tuple);
    (void)n;
    if (ec) break;
    http::response<http::string_body> res{http::status::ok, req.version()};
    res.set(http::field::server, "yilian-raw");
    res.set(http::field::content_type, "application/fhir+json;charset=utf-8");
    res.keep_alive(req.keep_alive());
    res.body() = patient_json;
    res.prepare_payload();
    auto [wec, wn] = co_await http::async_write(stream, res, use_tuple);
    (void)wn;
    if (wec || !res.keep_alive()) break;
  }
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
}

asio::awaitable<void> listen(tcp::acceptor& acceptor) {
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(asio::make_strand(acceptor.get_executor()), use_tuple);
    if (ec) {
      if (!acceptor.is_open()) co_return;
      continue;
    }
    auto ex = socket.get_executor();
    asio::co_spawn(ex, session(std::move(socket)), asio::detached);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen_at = "127.0.0.1:18081";
  unsigned threads = 1;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--listen" && i + 1 < argc) {
      listen_at = argv[++i];
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = static_cast<unsigned>(std::max(1, std::atoi(argv[++i])));
    } else {
      std::cerr << "usage: bench_raw_beast [--listen HOST:PORT] [--threads N]\n";
      return arg == "--help" ? 0 : 2;
    }
  }
  auto colon = listen_at.rfind(':');
  if (colon == std::string::npos) {
    std::cerr << "bench_raw_beast: --listen needs HOST:PORT\n";
    return 2;
  }
  try {
    asio::io_context ioc(static_cast<int>(threads));
    tcp::endpoint endpoint{asio::ip::make_address(listen_at.substr(0, colon)),
                           static_cast<unsigned short>(std::atoi(listen_at.c_str() + colon + 1))};
    tcp::acceptor acceptor(ioc);
    acceptor.open(endpoint.protocol());
    acceptor.set_option(asio::socket_base::reuse_address(true));
    acceptor.bind(endpoint);
    acceptor.listen(asio::socket_base::max_listen_connections);
    asio::co_spawn(ioc, listen(acceptor), asio::detached);
    asio::signal_set signals(ioc, SIGINT, SIGTERM);
    signals.async_wait([&](beast::error_code, int) { ioc.stop(); });
    std::cerr << "bench_raw_beast listening on " << acceptor.local_endpoint() << " with " << threads
              << " thread(s)\n";
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads; ++t) pool.emplace_back([&ioc] { ioc.run(); });
    ioc.run();
    for (auto& t : pool) t.join();
  } catch (const std::exception& e) {
    std::cerr << "bench_raw_beast: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
