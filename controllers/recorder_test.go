package controllers_test

import "k8s.io/apimachinery/pkg/runtime"

type k8sObject = runtime.Object
