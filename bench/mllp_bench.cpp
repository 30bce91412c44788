// MLLP round trips per second: N connections, each sending a 546-byte ORU^R01 (Chinese names and test names, UTF-8) and waiting for its
// ACK before the next (what an HL7 sender does). Two servers receive the same bytes:
//   mllp_server  the adapters' listener with a trivial handler that returns a fixed ACK (frame
//                parsing, a hop to the worker pool and back, the ACK written)
//   raw loop     the ceiling: a bare Asio coroutine per connection that looks for 0x1C 0x0D and
//                writes the same fixed ACK from the I/O thread
// The clients are adapters::mllp_client (blocking, one thread each) in the same process.
//
// bench_mllp [--seconds S] [--connections 1,8,50] [--io-threads T] [--workers W]
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "yilian/adapters/mllp.hpp"
#include "yilian/adapters/mllp_client.hpp"
#include "yilian/gateway/worker_pool.hpp"

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

const std::string fixed_ack =
    "MSH|^~\\&|YILIAN|ALLIANCE|LIS|HOSP|20260101120001||ACK^R01|ACK0001|P|2.4\rMSA|AA|MSG0001\r";

std::string sample_message() {
  std::string m =
      "MSH|^~\\&|LIS|HOSP|YILIAN|ALLIANCE|20260101120000||ORU^R01|MSG0001|P|2.4|||||CHN|UNICODE UTF-8\r"
      "PID|1||ZY26001234^^^HOSP^MR~500103195207304518^^^CHN^NNCHN||陈^国华||19520730|M\r"
      "OBR|1|ORD-1|LAB-1|CHEM7^生化七项^L|||20260101090000\r";
  const char* tests[] = {"K^钾^L|4.1|mmol/L|3.5-5.3", "NA^钠^L|140|mmol/L|137-147", "CL^氯^L|101|mmol/L|99-110",
                         "GLU^葡萄糖^L|5.2|mmol/L|3.9-6.1", "CREA^肌酐^L|78|umol/L|57-111"};
  int i = 1;
  for (const char* t : tests) {
    std::string fields = t;
    m += "OBX|" + std::to_string(i++) + "|NM|" + fields.substr(0, fields.find('|')) + "||" +
         fields.substr(fields.find('|') + 1) + "|N|||F|||20260101100000\r";
  }
  return m;
}

// The ceiling: read until 0x1C 0x0D, write the fixed ACK, repeat; no worker hop, no checks.
class raw_loop_server {
 public:
  explicit raw_loop_server(unsigned io_threads) : acceptor_(ioc_, {asio::ip::make_address("127.0.0.1"), 0}) {
    asio::co_spawn(ioc_, accept(), asio::detached);
    for (unsigned i = 0; i < io_threads; ++i) threads_.emplace_back([this] { ioc_.run(); });
  }
  ~raw_loop_server() {
    ioc_.stop();
    for (auto& t : threads_) t.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }

 private:
  asio::awaitable<void> accept() {
    for (;;) {
      auto [ec, socket] = co_await acceptor_.async_accept(asio::make_strand(ioc_), asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      socket.set_option(tcp::no_delay(true));
      auto executor = socket.get_executor();
      asio::co_spawn(executor, serve(std::move(socket)), asio::detached);
    }
  }
  static asio::awaitable<void> serve(tcp::socket socket) {
    const std::string framed = "\x0b" + fixed_ack + "\x1c\x0d";
    std::vector<char> buffer(64 * 1024);
    char previous = 0;
    for (;;) {
      auto [ec, n] = co_await socket.async_read_some(asio::buffer(buffer), asio::as_tuple(asio::use_awaitable));
      if (ec) co_return;
      int ends = 0;
      for (std::size_t i = 0; i < n; ++i) {
        if (previous == '\x1c' && buffer[i] == '\x0d') ++ends;
        previous = buffer[i];
      }
      for (int e = 0; e < ends; ++e) {
        auto [wec, w] = co_await asio::async_write(socket, asio::buffer(framed), asio::as_tuple(asio::use_awaitable));
        if (wec) co_return;
      }
    }
  }

  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  std::vector<std::thread> threads_;
};

struct result {
  double per_second = 0;
  double mean_ms = 0;
  long errors = 0;
};

result drive(std::uint16_t port, int connections, std::chrono::seconds duration, const std::string& message) {
  std::atomic<long> done{0}, errors{0};
  std::atomic<bool> go{false}, stop{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < connections; ++c) {
    threads.emplace_back([&] {
      try {
        yilian::adapters::mllp_client client("127.0.0.1", port);
        while (!go) std::this_thread::yield();
        while (!stop) {
          if (client.exchange(message) != fixed_ack) ++errors;
          ++done;
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "client: %s\n", e.what());
        ++errors;
      }
    });
  }
  std::this_thread::sleep_for(200ms);  // connections open
  auto started = std::chrono::steady_clock::now();
  go = true;
  std::this_thread::sleep_for(duration);
  long count = done.load();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  stop = true;
  for (auto& t : threads) t.join();
  result r;
  r.per_second = count / seconds;
  r.mean_ms = count ? 1000.0 * seconds * connections / count : 0;
  r.errors = errors.load();
  return r;
}

std::vector<int> parse_list(const char* text) {
  std::vector<int> out;
  for (const char* p = text; *p;) {
    out.push_back(std::atoi(p));
    const char* comma = std::strchr(p, ',');
    if (!comma) break;
    p = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int seconds = 3;
  std::vector<int> connection_counts{1, 8, 50};
  unsigned io_threads = 1, workers = 4;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--seconds") seconds = std::atoi(argv[i + 1]);
    else if (flag == "--connections") connection_counts = parse_list(argv[i + 1]);
    else if (flag == "--io-threads") io_threads = static_cast<unsigned>(std::atoi(argv[i + 1]));
    else if (flag == "--workers") workers = static_cast<unsigned>(std::atoi(argv[i + 1]));
    else {
      std::fprintf(stderr, "usage: bench_mllp [--seconds S] [--connections 1,8,50] [--io-threads T] [--workers W]\n");
      return 2;
    }
  }
  const std::string message = sample_message();
  std::printf("MLLP round trips, %zu-byte ORU^R01, %u I/O thread(s), %u workers, %d s per run, %u cores\n",
              message.size(), io_threads, workers, seconds, std::thread::hardware_concurrency());
  std::printf("%-12s %11s %14s %8s %14s %8s %7s\n", "connections", "raw msg/s", "raw mean ms", "", "mllp msg/s",
              "mean ms", "of raw");

  yilian::gateway::worker_pool pool(workers);
  yilian::adapters::mllp_options options;
  options.port = 0;
  options.io_threads = io_threads;
  yilian::adapters::mllp_server server(options, [](std::string_view, const yilian::adapters::mllp_peer&) {
    return fixed_ack;
  }, pool);
  server.start();
  raw_loop_server raw(io_threads);

  for (int connections : connection_counts) {
    auto ceiling = drive(raw.port(), connections, std::chrono::seconds(seconds), message);
    auto mllp = drive(server.port(), connections, std::chrono::seconds(seconds), message);
    std::printf("%-12d %11.0f %14.3f %8s %14.0f %8.3f %6.0f%%\n", connections, ceiling.per_second, ceiling.mean_ms,
                "", mllp.per_second, mllp.mean_ms, 100.0 * mllp.per_second / ceiling.per_second);
    if (ceiling.errors || mllp.errors)
      std::printf("  errors: raw %ld, mllp %ld\n", ceiling.errors, mllp.errors);
  }
  server.stop(1s);
  server.wait();
  return 0;
}
