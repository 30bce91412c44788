#include "yilian/gateway/worker_pool.hpp"

#include <atomic>
#include <chrono>
#include <doctest/doctest.h>
#include <mutex>
#include <set>
#include <thread>

using namespace yilian::gateway;

TEST_CASE("worker_pool: runs every task, on its own threads, and finishes queued work on shutdown") {
  std::atomic<int> done{0};
  std::mutex ids_mutex;
  std::set<std::thread::id> ids;
  {
    worker_pool pool(3);
    CHECK(pool.size() == 3);
    for (int i = 0; i < 100; ++i)
      pool.submit([&] {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        {
          std::lock_guard lock(ids_mutex);
          ids.insert(std::this_thread::get_id());
        }
        ++done;
      });
  }  // destructor drains the queue
  CHECK(done.load() == 100);
  CHECK(ids.count(std::this_thread::get_id()) == 0);
  CHECK(ids.size() <= 3);
}

TEST_CASE("worker_pool: zero threads means one; shutdown twice is harmless") {
  worker_pool pool(0);
  CHECK(pool.size() == 1);
  std::atomic<bool> ran{false};
  pool.submit([&] { ran = true; });
  pool.shutdown();
  pool.shutdown();
  CHECK(ran.load());
  CHECK(pool.queued() == 0);
}
